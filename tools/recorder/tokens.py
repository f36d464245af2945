"""The text of each token in context."""


class PieceDecoder:
    """Text of each token in context: concatenating the pieces gives the decoded sequence.

    A token that ends inside a multi-byte character gets an empty piece; the character goes to
    the token that completes it."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids):
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token_id):
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before):]
        if not after.startswith(before) and not after.endswith("\ufffd"):
            # The tokenizer rewrote earlier text (rare cleanup rules): emit this token alone.
            self.prefix, self.read = len(self.ids), len(self.ids)
            return self._decode([self.ids[-1]])
        return ""
