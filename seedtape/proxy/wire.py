"""Names of the headers seedtape reads and writes (README "Headers"), and where it may listen."""

import ipaddress

STATUS = "seedtape-status"
KEY = "seedtape-key"
FINGERPRINT = "seedtape-fingerprint"
SEED = "seedtape-seed"
NAMESPACE = "seedtape-namespace"  # request: label that enters the key
AUTH_TOKEN = "seedtape-token"  # request: the proxy's --auth-token
DIVERGENCE = "seedtape-divergence"
MISS = "seedtape-miss"  # replay miss: the nearest recordings and what differs, one line

# Request headers meant for seedtape only: never forwarded upstream.
PROXY_ONLY_REQUEST_HEADERS = (NAMESPACE, AUTH_TOKEN)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach ``host``: anywhere else needs --auth-token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # "" (every interface) and names
