"""`seedtape explain` (why would this request miss?) and `seedtape diff` (two recordings, field by field)."""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import click

from seedtape.cli import output
from seedtape.cli.inspection import open_store, resolve, store_option
from seedtape.proxy import dialects
from seedtape.proxy.audit import divergence
from seedtape.proxy.explain import jsondiff, nearest
from seedtape.proxy.key import keyrules
from seedtape.proxy.key.canonical import DEFAULT_IGNORED_FIELDS, CanonicalRequest, canonicalize
from seedtape.proxy.key.seed import DEFAULT_SEED, SeedPolicy
from seedtape.proxy.printable import escape

_KEYLIKE = re.compile(r"^[0-9a-f]{4,64}$")


def _load(source: str) -> object:
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise output.Failure(f"cannot read {source}: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise output.Failure(f"{source} is not JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


def _rules(parse):
    """A click callback: the option's values parsed, or a usage error naming the option (exit 2)."""

    def callback(ctx, param, values):
        try:
            return tuple(parse(v) for v in values)
        except ValueError as e:
            raise click.BadParameter(str(e), ctx, param) from None

    return callback


def _canonical(doc: dict, body: object = None, has_body: bool = False) -> CanonicalRequest:
    """A canonical request from its JSON (as `seedtape show --json` prints it), optionally with another body."""
    return CanonicalRequest(
        method=doc.get("method", "POST"),
        path=doc.get("path", "/v1/chat/completions"),
        query=tuple(tuple(q) for q in doc.get("query") or []),
        body=body if has_body else doc.get("body"),
        namespace=doc.get("namespace", ""),
        credential=doc.get("credential", ""),
        occurrence=doc.get("occurrence", 1),
    )


def _same_under_rules(st, expl: nearest.Explanation, key: str, paths, masks) -> list[str]:
    """The nearest recordings that are this request once the rules apply to them too: recorded before the rules."""
    out = []
    for near in expl.nearest:
        recorded = st.get(near.key).request
        body = recorded.get("body")
        if isinstance(body, (dict, list, str)):
            try:
                body, _ = keyrules.apply_in_place(copy.deepcopy(body), paths, masks)
            except keyrules.MaskTimeout:
                continue
        if _canonical(recorded, body, True).key == key:
            out.append(near.key)
    return out


@click.command()
@store_option
@click.argument("request")
@click.option("--path", "req_path", default=None, help="Endpoint path of a request body (default: guessed from the body).")
@click.option("--namespace", default="", help="Namespace the request would be sent under.")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True, help="Seed the proxy injects.")
@click.option("--no-seed-injection", is_flag=True, help="The proxy runs with --no-seed-injection.")
@click.option(
    "--ignore-field",
    multiple=True,
    metavar="FIELD",
    help="The proxy's --ignore-field list (default: user, metadata, store, prompt_cache_key, safety_identifier).",
)
@click.option("--ignore-query", multiple=True, metavar="NAME", help="The proxy's --ignore-query list.")
@click.option(
    "--ignore-path",
    multiple=True,
    metavar="PATH",
    callback=_rules(keyrules.parse_path),
    help="The proxy's --ignore-path list (e.g. messages.*.tool_call_id).",
)
@click.option("--mask", multiple=True, metavar="REGEX", callback=_rules(keyrules.compile_mask), help="The proxy's --mask list.")
@click.option("--fingerprint", default=None, help="The proxy's pinned --fingerprint.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def explain(
    store,
    request,
    req_path,
    namespace,
    seed,
    no_seed_injection,
    ignore_field,
    ignore_query,
    ignore_path,
    mask,
    fingerprint,
    as_json,
):
    """Explain whether REQUEST would replay, and if not, which recordings are nearest and what differs.

    Exit status 0 when it would replay, 1 when it would miss.

    REQUEST is a JSON file (a request body as a client sends it, or a canonical request as
    `seedtape show --json` prints it), - for stdin, or a recorded request key (prefix). The
    proxy's key options apply to a request body; a canonical request or a key is taken as it is.
    """
    applied: tuple[keyrules.RuleUse, ...] = ()
    body_given = False  # the key options apply to a request body, not to a canonical request or a key
    with open_store(store) as st:
        if request != "-" and not Path(request).exists() and _KEYLIKE.match(request.lower()):
            key = resolve(st, request)
            canonical_json = st.get(key).request
        else:
            doc = _load(request)
            if not isinstance(doc, dict):
                raise output.Failure(f"{request} must hold a JSON object (a request body)")
            if {"method", "path", "body"} <= set(doc):  # already canonical
                canonical_json = doc
            else:
                path, _, query = (req_path or dialects.guess_path(doc)).partition("?")
                dialect = dialects.match("POST", path)
                if dialect is not None and dialect.takes_seed:
                    doc, _ = SeedPolicy(seed, not no_seed_injection).apply(doc)
                ignored = frozenset(ignore_field) if ignore_field else frozenset(DEFAULT_IGNORED_FIELDS)
                try:
                    made = canonicalize(
                        "POST",
                        path,
                        query,
                        doc,
                        ignored_fields=ignored,
                        ignored_query=frozenset(ignore_query),
                        namespace=namespace,
                        ignored_paths=ignore_path,
                        masks=mask,
                    )
                except keyrules.MaskTimeout as e:
                    raise output.Failure(str(e)) from None
                canonical_json, applied, body_given = made.to_json(), made.applied, True
        canonical = _canonical(canonical_json)
        key = canonical.key
        hit = st.get(key, fingerprint)
        if hit is not None:
            result = {"key": key, "replays": True, "fingerprint": hit.fingerprint}
            text = [f"{key[:12]} replays: recorded under {hit.fingerprint}."]
        else:
            expl = nearest.explain(st, nearest.NearestIndex(st), canonical, fingerprint)
            result = {"replays": False, **expl.to_json()}
            text = [f"{key[:12]} would miss ({canonical.path}).", *expl.lines()]
            if body_given and (ignore_path or mask):
                same = _same_under_rules(st, expl, key, ignore_path, mask)
                result["same_under_rules"] = same
                if same:
                    text.append(
                        f"With these rules {', '.join(k[:12] for k in same)} {'is' if len(same) == 1 else 'are'} "
                        "this same request, recorded before they applied: record it once more with them (--mode auto) and it replays."
                    )
        if ignore_path or mask:
            result["rules_applied"] = [u.to_json() for u in applied]
            given = [(o, r.text) for o, rules in (("--ignore-path", ignore_path), ("--mask", mask)) for r in rules]
            unused = [(o, t) for o, t in given if not any((u.option, u.value) == (o, t) for u in applied)]
            result["rules_unused"] = [{"option": o, "value": t} for o, t in unused]
            if body_given:
                lines = [f"Rules applied: {', '.join(str(u) for u in applied)}."] if applied else []
                if unused:
                    lines.append(
                        f"Rules that changed nothing here: {', '.join(f'{o} {keyrules.shell_quote(t)}' for o, t in unused)}."
                    )
            else:
                lines = ["Rules not applied: --ignore-path and --mask apply to a request body, not to a recorded request."]
            text[1:1] = [escape(line) for line in lines]
    if as_json:
        output.echo_json(result)
    else:
        output.echo("\n".join(text))
    if not result["replays"]:
        sys.exit(1)  # scripts and CI can check a request before they rely on it


@click.command("diff")
@store_option
@click.argument("key_a")
@click.argument("key_b")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff_cmd(store, key_a, key_b, as_json):
    """Show how two recordings differ: their requests, then their responses (newest fingerprints)."""
    with open_store(store) as st:
        a, b = st.get(resolve(st, key_a)), st.get(resolve(st, key_b))
    req = jsondiff.diff(nearest.comparable(a.request), nearest.comparable(b.request))
    if a.request.get("path") != b.request.get("path"):
        req.insert(0, jsondiff.Change("path", a.request.get("path"), b.request.get("path")))
    out_a = divergence.outputs(a.endpoint, a.format, a.body)
    out_b = divergence.outputs(b.endpoint, b.format, b.body)
    if a.endpoint != b.endpoint:  # different kinds of answer: no field-level comparison
        resp = [jsondiff.Change("endpoint", a.endpoint, b.endpoint)]
    else:
        group = dialects.named(a.endpoint).output_group  # outputs are lists of these
        resp = [
            jsondiff.Change(group + c.path if c.path.startswith("[") else c.path, c.a, c.b) for c in jsondiff.diff(out_a, out_b)
        ]
    if as_json:
        output.echo_json(
            {
                "a": {"key": a.key, "fingerprint": a.fingerprint},
                "b": {"key": b.key, "fingerprint": b.fingerprint},
                "request": [c.to_json() for c in req],
                "response": [c.to_json() for c in resp],
                "response_departure": jsondiff.first_departure(out_a, out_b) if a.endpoint == b.endpoint else None,
            }
        )
        return
    output.echo(f"a {a.key[:12]} ({a.fingerprint})  b {b.key[:12]} ({b.fingerprint})")
    output.echo("request:" + ("" if req else " identical"))
    for c in req:
        output.echo(f"  {c}")
    if a.fingerprint != b.fingerprint:
        output.echo(f"fingerprint: {a.fingerprint} != {b.fingerprint}")
    output.echo("response:" + ("" if resp else " identical output"))
    for c in resp:
        output.echo(f"  {c}")
