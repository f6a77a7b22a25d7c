"""A tiny LLM app, as a user of seedtape would have one: it only knows the openai SDK."""

import openai


def summarize(text: str) -> str:
    client = openai.OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY come from the environment
    r = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "system", "content": "Summarize."}, {"role": "user", "content": text}]
    )
    return r.choices[0].message.content


def story(topic: str) -> str:
    client = openai.OpenAI()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"A story about {topic}"}], stream=True
    )
    return "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
