"""Next-token choice: greedy, or temperature / top-k / top-p sampling with a repetition penalty."""


class Sampler:
    def __init__(self, temperature, top_k, top_p, repetition_penalty, seed):
        import torch
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.penalty = repetition_penalty
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def __call__(self, logits, seen):
        """Next token id from last-position logits [vocab] (any device); `seen`: ids so far."""
        import torch
        logits = logits.detach().float().cpu().clone()
        if self.penalty != 1.0 and seen:
            index = torch.tensor(sorted(set(seen)), dtype=torch.long)
            index = index[index < logits.shape[0]]
            picked = logits[index]
            logits[index] = torch.where(picked > 0, picked / self.penalty, picked * self.penalty)
        if self.temperature == 0:
            return int(torch.argmax(logits))
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[0]:
            threshold = torch.topk(logits, self.top_k).values[-1]
            logits[logits < threshold] = -float("inf")
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            before = torch.cumsum(probs, dim=-1) - probs  # mass of the more likely tokens
            drop = before >= self.top_p
            logits[order[drop]] = -float("inf")
        probs = torch.softmax(logits, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
