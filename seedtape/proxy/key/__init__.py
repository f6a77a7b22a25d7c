"""The request key: what a request means, minus what must not split or leak a key."""
