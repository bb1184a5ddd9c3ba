"""The running batch of the HF engine's decoding loop, in two cache layouts.

Both hold the rows being decoded, their key/value cache, attention mask and positions, and offer the
same four operations to :meth:`uqflow.generation.hf.HFEngine._stream`: the logits of the running rows,
``drop`` the rows that finished, ``step`` one token further, ``admit`` freshly prefilled prompts.

- :class:`DynamicBatch` keeps exactly the running rows: a finished row leaves the cache, a step
  appends one slot (transformers' ``DynamicCache``), admitted prompts are left-padded and stacked
  onto it. Shapes change at every step.
- :class:`StaticBatch` keeps a fixed number of rows and cache slots (transformers' ``StaticCache``):
  a finished row stays in place, unread, until a waiting prompt takes its slot; every row writes
  the same cache slot at each step (the rows are left-aligned on it, each at its own positions), and
  the slots before a row's start are masked out. Every step has the same shapes and tensor addresses,
  so it can be captured once in a CUDA graph (``torch.compile(mode="reduce-overhead")``) and replayed
  with one launch instead of one per kernel.

Either way a row attends to exactly its own prompt and answer at its own positions, so an answer is
the same in both up to float rounding (masked slots weigh exactly zero in the softmax)."""

from __future__ import annotations

from collections.abc import Callable


def stack(parts):
    """One decoding batch from several, each (logits (b, V), cache, mask (b, S_i), positions (b, 1)):
    caches and masks are left-padded to the longest S_i and stacked. A padding slot is masked out
    like any other, so each row attends to exactly what it attended to before."""
    import torch
    import torch.nn.functional as F

    S = max(m.shape[1] for _, _, m, _ in parts)
    merged = parts[0][1]
    for i, layer in enumerate(merged.layers):
        # (b, heads, S, head_dim)
        layer.keys = torch.cat([F.pad(c.layers[i].keys, (0, 0, S - m.shape[1], 0)) for _, c, m, _ in parts])
        layer.values = torch.cat([F.pad(c.layers[i].values, (0, 0, S - m.shape[1], 0)) for _, c, m, _ in parts])
    mask = torch.cat([F.pad(m, (S - m.shape[1], 0)) for _, _, m, _ in parts])
    return (torch.cat([lg for lg, _, _, _ in parts]), merged, mask, torch.cat([p for _, _, _, p in parts]))


def trim(cache, mask):
    """Drop the leading cache slots that no row attends to (left by rows that have left)."""
    used = mask.any(0)
    first = int(used.int().argmax())
    if first == 0:
        return mask
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
    return mask[:, first:]


class DynamicBatch:
    """The running rows alone, in a cache that grows by a slot a step and shrinks as rows leave.

    ``forward(input_ids, mask, positions, cache)`` runs the model one token further and returns the
    last position's logits; ``first`` is a prefill: (logits (b, V), cache, mask (b, S), positions (b, 1), rows)."""

    def __init__(self, forward: Callable, first, *, trim_unused: bool):
        self.forward = forward
        self.logits, self.cache, self.mask, self.pos, self.rows = first
        self.trim_unused = trim_unused

    def drop(self, keep: list[int]) -> None:
        import torch

        sel = torch.tensor(keep, device=self.mask.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.pos = self.mask[sel], self.pos[sel]
        self.rows = [self.rows[j] for j in keep]
        if self.trim_unused:
            self.mask = trim(self.cache, self.mask)

    def step(self, tokens) -> None:
        """Feed each running row its next token (``tokens``, (b,), in the order of ``rows``)."""
        import torch

        self.mask = torch.cat([self.mask, self.mask.new_ones(len(self.rows), 1)], 1)  # (b, past + 1)
        self.pos = self.pos + 1
        self.logits = self.forward(tokens[:, None], self.mask, self.pos, self.cache)

    def admit(self, new) -> None:
        logits, cache, mask, pos, rows = new
        self.logits, self.cache, self.mask, self.pos = stack([(self.logits, self.cache, self.mask, self.pos),
                                                              (logits, cache, mask, pos)])
        self.rows = self.rows + rows


class StaticBatch:
    """``width`` rows over ``capacity`` cache slots, every shape fixed (see the module's docstring).

    All rows write cache slot ``cur`` at a step; a row admitted with a prefill of S slots occupies
    [cur - S, cur), its earlier slots masked out. Before an admission the cache is shifted (rolled
    along the slots, masks with it) so that ``cur`` is just large enough for the oldest running row
    and the new prefill: with ``capacity`` >= the longest prompt + 2 x ``max_new_tokens`` every row
    then finishes before ``cur`` reaches the end. A shift moves keys, values and mask alike and
    leaves positions alone, so no row sees a difference.

    ``cache`` is a transformers ``StaticCache`` for ``width`` rows and ``capacity`` slots, reused from
    batch to batch (its tensors keep their addresses, which a captured CUDA graph needs)."""

    def __init__(self, forward: Callable, cache, first, *, width: int, capacity: int, max_new_tokens: int):
        import torch

        self.forward, self.cache = forward, cache
        self.width, self.capacity, self.max_new_tokens = width, capacity, max_new_tokens
        dev = cache.layers[0].keys.device
        self.mask = torch.zeros(width, capacity, dtype=torch.long, device=dev)
        self.pos = torch.zeros(width, 1, dtype=torch.long, device=dev)
        self.tokens = torch.zeros(width, dtype=torch.long, device=dev)
        self.all_logits = None  # (width, V): the last step's, a finished row's unread
        self.slots: list = [None] * width  # the row decoding in each slot of the batch, None when free
        self.start = [0] * width  # the first cache slot of each row's prefill
        self.cur = 0  # the cache slot the next step writes
        self._active = None
        self.admit(first)

    @property
    def rows(self) -> list:
        return [r for r in self.slots if r is not None]

    def _active_slots(self):
        import torch

        if self._active is None:
            self._active = torch.tensor([s for s, r in enumerate(self.slots) if r is not None],
                                        device=self.mask.device, dtype=torch.long)
        return self._active

    @property
    def logits(self):
        return self.all_logits.index_select(0, self._active_slots())

    def drop(self, keep: list[int]) -> None:
        active = [s for s, r in enumerate(self.slots) if r is not None]
        kept = set(keep)
        for j, s in enumerate(active):
            if j not in kept:
                self.slots[s] = None
        self._active = None

    def step(self, tokens) -> None:
        """Feed each running row its next token (``tokens``, (b,), in the order of ``rows``); a free
        slot is fed its last token again, and its result is not read."""
        self.tokens.index_copy_(0, self._active_slots(), tokens)
        self.mask[:, self.cur] = 1
        self.pos += 1
        # the step writes slot cur and advances every layer's write slot by one, as cur here
        self.all_logits = self.forward(self.tokens[:, None], self.mask, self.pos, self.cache)
        self.cur += 1

    def admit(self, new) -> None:
        """Place freshly prefilled rows (logits, DynamicCache, mask (n, S), positions (n, 1), rows) in free slots."""
        import torch

        logits, cache, mask, pos, rows = new
        n, S = mask.shape
        free = [s for s, r in enumerate(self.slots) if r is None][:n]
        if len(free) < n:
            raise ValueError(f"{n} rows admitted into a batch with {len(free)} free slots")
        running = [self.start[s] for s, r in enumerate(self.slots) if r is not None]
        if not running:  # nothing to keep (a new batch): the prefill fills the first S slots
            self.mask.zero_()
            self._write_at(S)
        elif max(S, self.cur - min(running)) != self.cur:
            self._shift(max(S, self.cur - min(running)) - self.cur)
        if self.cur + self.max_new_tokens > self.capacity:
            raise ValueError(f"a batch of {self.capacity} cache slots cannot hold a prefill of {S} and "
                             f"{self.max_new_tokens} new tokens beside its running rows")
        sl = torch.tensor(free, device=self.mask.device)
        lo = self.cur - S
        for layer, part in zip(self.cache.layers, cache.layers):
            layer.keys[sl, :, lo:self.cur] = part.keys
            layer.values[sl, :, lo:self.cur] = part.values
        self.mask[sl] = 0
        self.mask[sl, lo:self.cur] = mask
        self.pos[sl] = pos
        if self.all_logits is None:
            self.all_logits = logits.new_zeros(self.width, logits.shape[-1])
        self.all_logits[sl] = logits
        for s, row in zip(free, rows):
            self.slots[s], self.start[s] = row, lo
        self._active = None

    def _shift(self, delta: int) -> None:
        """Move every row's cache slots and mask by ``delta`` slots (in place: the tensors keep their addresses)."""
        import torch

        for layer in self.cache.layers:
            layer.keys.copy_(torch.roll(layer.keys, delta, 2))
            layer.values.copy_(torch.roll(layer.values, delta, 2))
        self.mask = torch.roll(self.mask, delta, 1)
        if delta > 0:
            self.mask[:, :delta] = 0  # wrapped round from the end: never written
        else:
            self.mask[:, delta:] = 0
        self.start = [s + delta for s in self.start]
        self._write_at(self.cur + delta)

    def _write_at(self, slot: int) -> None:
        """Make ``slot`` the cache slot the next step writes, in every layer (a step then advances
        them itself)."""
        self.cur = slot
        for layer in self.cache.layers:
            layer.cumulative_length.fill_(slot)
