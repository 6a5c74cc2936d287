"""A character tokenizer for backend tests that need no model: id = code point, 0 = EOS."""


class Chars:
    eos_ids = frozenset({0})

    def encode(self, text, *, special=False):
        return [ord(c) for c in text]

    def decode(self, ids, *, special=False):
        return "".join(chr(i) for i in ids if i)

    def chat_prompt(self, messages):
        return "".join(m["content"] for m in messages)
