"""The mapping's negative-binomial likelihood, written without cancellation, with its gradients by hand.

Per count x of mean μ and shape α, without the constant −log Γ(x+1),

    log Γ(x+α) − log Γ(α) + α log α − (α+x) log(α+μ) + x log μ  =  Σ_{j<x} log1p(j/α) − α L + x (log μ − L)

with L = log1p(μ/α) (the log α parts cancel exactly). On the left, for a large α (1/v_eg² of a gene whose counts
are Poisson-like: its guide can draw α of 1e9 and more) the float32 terms are huge and nearly cancel, and their
rounding errors can exceed the model's whole loss; on the right every term stays of the size of the result. Both
objectives, full-data (:mod:`.objective`) and minibatch (:mod:`.minibatch`), score counts with this form.

With μ_sg = y_s (Σ_f w_sf g_fg m_g + s_g) = ([y ⊙ w, y] [g ⊙ m; s])_sg (one matrix product) and α = α_eg of the
location's batch, the μ-dependent terms, summed over every location × gene entry, are

    −Σ_g α_g Σ_s L  +  Σ_{x>0} x log(μ r)        with r = 1/(1 + μ/α) = α/(α+μ), L = −log r

(x (log μ − L) = x log(μ r): the log of a product, accurate wherever μ ≪ α or μ ≫ α), so that the counts are read
only where they are not zero. Their gradient with respect to μ is −r + x (1/μ − r/α), i.e. −r' with r' = r − x r / μ
(the second part only where x > 0); with respect to α, −L + μ r'/α + x/α per entry. Every gradient the model needs is
a reduction of r' (and of L) over locations or genes, so two matrix products give them all:

    A = [y ⊙ w, y]ᵀ r'          (F+1, G):  ∂/∂m_g, ∂/∂s_g, and Σ_s μ r' = Σ_k [g ⊙ m; s]_kg A_kg for ∂/∂α_g
    B = r' [g ⊙ m; s]ᵀ          (S, F+1):  ∂/∂w_sf and ∂/∂y_s

and ∂/∂α_g = −Σ_s L + (Σ_s μ r' + Σ_s x) / α (each term of the size of μ/α: no cancellation of large terms). A block
of locations is thus one matrix product that writes μ, passes over its location × gene entries (μ/α, 1 + μ/α and its
reciprocal, the log1p of pairs of rows: :func:`log1p_column_sums`) and two matrix products that read r', plus
passes over the non-zero counts (two gathers, one scatter-add that never hits an index twice, a few element-wise
products); no autograd temporaries. Measured against an all-dense variant (no gathers or scatters, the counts read
densely): twice as fast at 40-45 % non-zero counts. The terms that involve only α and the counts, Σ_{j<x} log1p(j/α),
come from the count tables (:class:`~tissuemap.models.negative_binomial.ExceedanceTerms`,
:func:`~tissuemap.models.negative_binomial.large_count_log1p_terms`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tissuemap.models.negative_binomial import HISTOGRAM_MAX_COUNT, ExceedanceTerms, exceedance_table

# Entries (locations x genes) of the likelihood computed at once. On CPU ~0.5M keeps the two buffers in cache (2^18
# and 2^19 measured fastest on 2-core machines; one whole-data block is 40 % slower on 0.7 M entries). On a GPU
# whole batches, up to 2^28 entries (1 GiB per float32 buffer).
CPU_BLOCK_ENTRIES = 1 << 19
GPU_BLOCK_ENTRIES = 1 << 28


def default_block_rows(n_genes: int, device: torch.device) -> int:
    """Locations per block: :data:`CPU_BLOCK_ENTRIES` or :data:`GPU_BLOCK_ENTRIES` entries."""
    entries = GPU_BLOCK_ENTRIES if device.type == "cuda" else CPU_BLOCK_ENTRIES
    return max(1, entries // n_genes)


def block_ranges(bounds: list[tuple[int, int]], block_rows: int) -> list[tuple[int, int, int]]:
    """``(first row, end row, batch)`` of every block: each batch's rows (``bounds``) cut into ``block_rows``."""
    return [(first, min(first + block_rows, end), batch)
            for batch, (start, end) in enumerate(bounds) for first in range(start, end, block_rows)]


def histogram_cutoff(value_parts, n_batches: int, n_genes: int) -> int:
    """The histogram's cutoff K: the smallest count value (1 to :data:`HISTOGRAM_MAX_COUNT`) exceeded by at most
    E·G of the non-zero counts (given in parts: ``value_parts``, an iterable of tensors)."""
    top = HISTOGRAM_MAX_COUNT + 1
    frequency = sum(torch.bincount(values.clamp(max=top).long(), minlength=top + 1) for values in value_parts)
    exceeding = frequency.flip(0).cumsum(0).flip(0)[1:].tolist()  # exceeding[k]: entries with x > k
    allowed = n_batches * n_genes
    return next((k for k in range(1, HISTOGRAM_MAX_COUNT) if exceeding[k] <= allowed), HISTOGRAM_MAX_COUNT)


@dataclass(frozen=True)
class HistogramTables:
    """What Σ_{j<x} log1p(j/α) and the α-gradient of the likelihood need of some counts, per batch and gene, for the
    cutoff K (see :class:`CountTables`): the dense exceedance table, the counts above K one by one and per batch and
    gene, and the total count of every batch and gene."""

    exceedance: torch.Tensor  # (E, K, G): batch e's counts of gene g above j
    large_values: torch.Tensor  # counts above K
    large_pairs: torch.Tensor  # their batch e and gene g, as e * G + g
    large_counts: torch.Tensor  # (E, G): how many counts of batch e and gene g are above K
    large_excess: torch.Tensor  # (E, G): their Σ (x − K)
    totals: torch.Tensor  # (E, G): Σ x over batch e's locations, of gene g

    @staticmethod
    def build(parts, n_batches: int, n_genes: int, cutoff: int) -> HistogramTables:
        """From ``parts``, an iterable of (non-zero counts, their genes, their batch: one int or one per count),
        accumulated part by part (no temporary of all the counts)."""
        E, G, K = n_batches, n_genes, cutoff
        histogram = 0
        large_values, large_batch, large_gene = [], [], []
        for values, genes, batch in parts:
            # histogram[e, v - 1, g]: entries of batch e and gene g with min(x, K) == v
            histogram = histogram + torch.bincount((batch * K + values.clamp(max=K).long() - 1) * G + genes,
                                                   minlength=E * K * G)
            large = (values > K).nonzero().squeeze(1)  # one search, three gathers (boolean masks search each time)
            large_values.append(values.index_select(0, large))
            large_gene.append(genes.index_select(0, large))
            large_batch.append(batch.index_select(0, large) if isinstance(batch, torch.Tensor)
                               else torch.full_like(large_gene[-1], batch))
        exceedance = exceedance_table(histogram.reshape(E, K, G), 1)
        large_values, large_batch, large_gene = (torch.cat(part) for part in (large_values, large_batch, large_gene))
        pairs = large_batch * G + large_gene
        # per batch and gene, in integers (exact, in any order): no host read when the objective uses them
        large_counts = torch.zeros(E * G, dtype=torch.int64, device=pairs.device).index_add_(
            0, pairs, torch.ones_like(pairs))
        large_excess = torch.zeros_like(large_counts).index_add_(0, pairs, large_values.long() - K)
        totals = exceedance.sum(1).view(-1) + large_excess  # Σ min(x, K) from the table, then the rest
        dtype = values.dtype
        return HistogramTables(exceedance.to(dtype), large_values, pairs,
                               *(part.view(E, G).to(dtype) for part in (large_counts, large_excess, totals)))


@dataclass(frozen=True)
class CountBlock:
    """The observed counts of a block of consecutive locations of one batch, as their non-zero entries (row-major)."""

    start: int
    end: int
    batch: int
    values: torch.Tensor  # (nnz,) counts x > 0
    negative_values: torch.Tensor  # (nnz,) −x
    flat_index: torch.Tensor  # (nnz,) row * G + gene, rows counted from ``start``


class CountTables:
    """What the likelihood needs of the observed counts, computed once: the non-zero counts of every block of
    locations (:class:`CountBlock`), the total count of every batch and gene (``totals``), and the tables for
    Σ_s Σ_{j<x} log1p(j/α) = Σ_j #(x > j) log1p(j/α) per batch and gene (:mod:`tissuemap.models.negative_binomial`),
    built one block at a time (no whole-data temporary).

    ``exceedance`` (:class:`~tissuemap.models.negative_binomial.ExceedanceTerms`) counts, per batch e and gene g, the
    locations with x_sg > j, for j below the cutoff K (the smallest count value, 1 to :data:`HISTOGRAM_MAX_COUNT`,
    exceeded by at most E·G entries); the rare larger counts
    (``large_values``, ``large_pairs``, ``large_counts``, ``large_excess``: as in :class:`HistogramTables`) get
    Σ_{K≤j<x} log1p(j/α) each. ``log_factorial_total``:
    the constant Σ log Γ(x+1) the objective leaves out.

    Parameters
    ----------
    counts
        ``(S, G)`` dense counts, rows sorted by batch.
    bounds
        ``(first row, end row)`` of every batch.
    block_rows
        Locations per block. ``None``: :data:`CPU_BLOCK_ENTRIES` or :data:`GPU_BLOCK_ENTRIES` entries.
    """

    def __init__(self, counts: torch.Tensor, signatures: torch.Tensor, bounds: list[tuple[int, int]],
                 block_rows: int | None = None):
        self.signatures = signatures
        n_batches, n_genes = len(bounds), counts.shape[1]
        if block_rows is None:
            block_rows = default_block_rows(n_genes, counts.device)
        ranges = block_ranges(bounds, block_rows)
        self.blocks = []
        for start, end, batch in ranges:
            block = counts[start:end].reshape(-1)
            flat_index = torch.nonzero(block).squeeze(1)  # row-major: row * G + gene, rows counted from start
            values = block[flat_index]
            self.blocks.append(CountBlock(start, end, batch, values, -values, flat_index))
        self.cutoff = histogram_cutoff((block.values for block in self.blocks), n_batches, n_genes)
        tables = HistogramTables.build(((block.values, block.flat_index % n_genes, block.batch)
                                        for block in self.blocks), n_batches, n_genes, self.cutoff)
        self.exceedance = ExceedanceTerms(tables.exceedance)
        self.large_values, self.large_pairs = tables.large_values, tables.large_pairs
        self.large_counts, self.large_excess, self.totals = tables.large_counts, tables.large_excess, tables.totals
        self.log_factorial_total = sum(float(torch.lgamma(block.values.double() + 1).sum()) for block in self.blocks)
        self.scratch = CountScratch(max(end - start for start, end, _ in ranges) * n_genes, counts)


class CountScratch:
    """Two location × gene buffers, reused by every block and every step (no allocation in the loop)."""

    def __init__(self, entries: int, like: torch.Tensor):
        self.first = like.new_empty(entries)
        self.second = like.new_empty(entries)

    def views(self, rows: int, genes: int) -> tuple[torch.Tensor, torch.Tensor]:
        size = rows * genes
        return self.first[:size].view(rows, genes), self.second[:size].view(rows, genes)


def log1p_column_sums(ratio: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Σ over rows of log1p(``ratio``) ``(n, G)``, ``ratio`` ≥ 0, working in ``scratch`` (its first n/2 rows).

    Two rows at a time, log1p(a) + log1p(b) = log1p(a + b + ab): half the log1p (on a CPU three times a log's cost),
    and a + b + ab keeps the relative precision of a and b (a sum of non-negative terms). It overflows only where
    (1+a)(1+b) exceeds float32's range, μ/α above 1e19: an α below 1e-13, a guide draw far beyond any fit.
    """
    half = ratio.shape[0] // 2
    top, bottom = ratio[:half], ratio[half: 2 * half]
    sums = torch.add(top, bottom, out=scratch[:half]).addcmul_(top, bottom).log1p_().sum(0)
    if ratio.shape[0] % 2:
        sums += torch.log1p(ratio[-1])
    return sums


def block_terms(w, detection, left, linear, inverse_alpha, block: CountBlock, scratch: CountScratch):
    """The μ-dependent terms of one block of locations of one batch but −Σ_g α_g Σ_s L, and their gradients.

    Parameters
    ----------
    w
        ``(n, F)`` cell abundance w_sf of the block's locations.
    detection
        ``(n, 1)`` y_s.
    left
        ``(n, F+1)`` [y ⊙ w, y] (see the module's note).
    linear
        ``(F+1, G)`` [g ⊙ m; s] of the block's batch: μ = left @ linear.
    inverse_alpha
        ``(1, G)`` 1/α_eg of the block's batch.
    block, scratch
        The block's non-zero counts, and the buffers to work in.

    Returns
    -------
    Σ_{x>0} x log(μ r) (0-d); the gradients with respect to ``w`` ``(n, F)`` and ``detection`` ``(n, 1)``; ``A``
    ``(F+1, G)`` and Σ_s L ``(G,)``, from which the rest of the terms and the gradients with respect to m_g, s_eg and
    α_eg follow per batch.
    """
    n, F = w.shape
    ratio, log1p_ratio = scratch.views(n, linear.shape[1])
    index = block.flat_index
    mu = torch.mm(left, linear, out=ratio)  # μ = (w (g ⊙ m) + s) y, one matrix product
    mu_observed = mu.view(-1).index_select(0, index)
    ratio = mu.mul_(inverse_alpha)  # μ/α
    log1p_sums = log1p_column_sums(ratio, log1p_ratio)  # Σ_s L
    share = ratio.add_(1).reciprocal_()  # r = α/(α+μ)
    share_observed = share.view(-1).index_select(0, index)
    terms = torch.dot(block.values, torch.log(mu_observed * share_observed))
    share.view(-1).scatter_add_(0, index, block.negative_values / mu_observed * share_observed)  # r'
    reduced_genes = left.T @ share  # A
    reduced_locations = share @ linear.T  # B
    grad_w = reduced_locations[:, :F].mul(detection).neg_()
    grad_detection = -(torch.linalg.vecdot(w, reduced_locations[:, :F]) + reduced_locations[:, F]).unsqueeze(1)
    return terms, grad_w, grad_detection, reduced_genes, log1p_sums


class NegativeBinomialMeanTerms(torch.autograd.Function):
    """Σ over locations and genes of the μ-dependent terms (see the module's note), block by block, with the part of
    the α-gradient that comes with them (Σ_s x/α included). Gradients are computed in the forward pass, so that no
    location × gene temporary outlives its block.

    ``counts``: the blocks of non-zero counts (``blocks``, rows counted as in ``w``), the ``(F, G)`` ``signatures``,
    the ``(E, G)`` ``totals`` of the counts of those rows, and a :class:`CountScratch` for the largest block
    (``scratch``): a :class:`CountTables`, or a minibatch's batch.
    """

    @staticmethod
    def forward(ctx, w, platform, background, detection, alpha, counts):
        F = w.shape[1]
        E, G = alpha.shape
        inverse_alpha = alpha.reciprocal()
        grad_w = torch.empty_like(w)
        grad_detection = torch.empty_like(detection)
        reduced = w.new_zeros(E, F + 1, G)  # per batch: A summed over its blocks
        log1p_sums = torch.zeros_like(alpha)  # per batch: Σ_s L
        linears = torch.cat([(counts.signatures * platform).expand(E, F, G), background.unsqueeze(1)], 1)
        lefts = torch.cat([w * detection, detection], 1)
        terms = w.new_zeros(())
        for block in counts.blocks:
            rows, batch = slice(block.start, block.end), block.batch
            block_sum, grad_w[rows], grad_detection[rows], block_reduced, block_log1p_sums = block_terms(
                w[rows], detection[rows], lefts[rows], linears[batch], inverse_alpha[batch: batch + 1], block,
                counts.scratch,
            )
            terms += block_sum
            reduced[batch] += block_reduced
            log1p_sums[batch] += block_log1p_sums
        terms -= torch.dot(alpha.view(-1), log1p_sums.view(-1))
        grad_platform = -(counts.signatures * reduced[:, :F]).sum((0, 1)).unsqueeze(0)
        grad_background = -reduced[:, F]
        grad_alpha = ((linears * reduced).sum(1) + counts.totals).mul_(inverse_alpha).sub_(log1p_sums)
        ctx.save_for_backward(grad_w, grad_platform, grad_background, grad_detection, grad_alpha)
        return terms

    @staticmethod
    def backward(ctx, grad_output):
        return (*(grad * grad_output for grad in ctx.saved_tensors), None)
