"""Parareal over the stage blocks (pure): parallel-in-time sampling of one request, exact when it runs out.

The T steps are split into N contiguous blocks (the stage ranges). U_0 is the initial latents and block n
maps U_{n-1} to U_n. The fine solver F_n runs the block's own steps (what its stage does anyway); the coarse
solver G_n is one Euler step across the block. Iteration 0 is the coarse sweep U^0_n = G_n(U^0_{n-1}); each
iteration k >= 1 computes

    U^k_n = F_n(U^{k-1}_{n-1}) + (G_n(U^k_{n-1}) - G_n(U^{k-1}_{n-1}))

where all F_n of one iteration are independent (one per stage actor, in parallel). After iteration k the
first k blocks are the serial result exactly: U^k_k = F_k(U^{k-1}_{k-1}) from an exact input. This module
uses that structurally (blocks n < k are carried over, U^k_k takes F's value with no correction added), so at
k = N the final latents are the serial ones to the bit, not merely up to rounding of F + G - G. The
correction is formed as (G_new - G_old) before it is added, so it is exactly zero where the inputs agree, and in
float32 whatever the latents' dtype (`correct`).

Stopping: after iteration k, `change` is the max absolute difference between U^k_N and U^{k-1}_N (final
latents, latent units, before decoding). Stop when k = N (exact), when tol > 0 and change <= tol, or at
max_iters. tol = 0 therefore always gives the serial result.

Dataflow: every F and G call is ready as soon as its input is known (asyncio tasks), including fine solves
of the next iteration before the current one is checked (speculative; cancelled once the result is
decided). Each block has one solver (its stage actor) and runs one solve at a time: of its ready calls the
earliest iteration goes first, a coarse call before a fine one, which is the order `schedule()` models. So
speculative work never delays the critical path, and nothing is queued on an actor where it could not be
taken back. The solvers are abstract async callables, so the Ray executor runs them on stage actors and the
tests run them in-process. No Ray, Serve or HTTP here; `schedule()` models the latency in UNet evaluations.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

import torch

# (block index 0..N-1, latents at the block's first step) -> latents at its last step
Solver = Callable[[int, torch.Tensor], Awaitable[torch.Tensor]]


@dataclass(frozen=True)
class PararealStats:
    """What one parareal solve did."""

    iterations: int  # k at the stop (0 for a single block: its fine solve is the serial solve)
    exact: bool  # the result is the serial one (k reached the number of blocks)
    final_change: float  # max |U^k_N - U^{k-1}_N| at the stop; 0.0 when exact after a single block
    fine_solves: int  # F calls started (including speculative ones of a later iteration)
    coarse_solves: int  # G calls started
    unet_evals: int  # UNet evaluations started: a step of a fine solve counts 1, a coarse solve 1
    changes: tuple[float, ...] = ()  # the change after each iteration 1..k (the last is final_change)


async def parareal(
    u0: torch.Tensor,
    blocks: Sequence[range],
    fine: Solver,
    coarse: Solver,
    tol: float = 0.0,
    max_iters: int | None = None,
    on_iteration: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, PararealStats]:
    """Solve from u0 across `blocks` (contiguous step ranges); returns the final latents and the stats.

    `on_iteration(k, exact_steps)` is called after each iteration k that does not end the solve, with the
    number of steps whose result is now the serial one (the first k blocks): progress for a caller."""
    n_blocks = len(blocks)
    if n_blocks < 1:
        raise ValueError("parareal needs at least one block")
    if any(len(b) < 1 for b in blocks) or any(a.stop != b.start for a, b in itertools.pairwise(blocks)):
        raise ValueError(f"blocks must be contiguous, non-empty step ranges, got {list(blocks)}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if max_iters is not None and max_iters < 1:
        raise ValueError(f"max_iters must be at least 1, got {max_iters}")
    limit = n_blocks if max_iters is None else min(max_iters, n_blocks)
    counts = {"fine": 0, "coarse": 0, "evals": 0}
    gates = [_BlockGate() for _ in blocks]

    async def call(kind: str, k: int, n: int, x: asyncio.Future | torch.Tensor) -> torch.Tensor:
        value = await x if isinstance(x, asyncio.Future) else x
        async with gates[n].turn((k, 0 if kind == "coarse" else 1)):
            counts[kind] += 1
            counts["evals"] += len(blocks[n]) if kind == "fine" else 1
            return await (fine if kind == "fine" else coarse)(n, value)

    async def corrected(f: asyncio.Future, g_new: asyncio.Future, g_old: asyncio.Future) -> torch.Tensor:
        return correct(await f, await g_new, await g_old)

    if n_blocks == 1:  # nothing to parallelise: the fine solve is the serial solve
        counts.update(fine=1, evals=len(blocks[0]))
        return await fine(0, u0), _stats(0, True, 0.0, counts, [])

    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Future] = []

    def spawn(coro) -> asyncio.Future:
        task = loop.create_task(coro)
        tasks.append(task)
        return task

    done_u0: asyncio.Future = loop.create_future()
    done_u0.set_result(u0)
    # u[k][n]: U^k_n (n = 0..N); g[k][n]: G_n(U^k_{n-1}) for block index n-1.
    u: list[list[asyncio.Future]] = [[done_u0]]
    g: list[dict[int, asyncio.Future]] = [{}]
    # 0. the coarse sweep
    for n in range(1, n_blocks + 1):
        g[0][n] = spawn(call("coarse", 0, n - 1, u[0][n - 1]))
        u[0].append(g[0][n])
    # 1..limit. every iteration is wired up front; a call starts when its inputs exist.
    for k in range(1, limit + 1):
        row: list[asyncio.Future] = [done_u0]
        g.append({})
        for n in range(1, n_blocks + 1):
            if n < k:
                row.append(u[k - 1][n])  # exact since iteration n: carried over unchanged
            elif n == k:
                row.append(spawn(call("fine", k, n - 1, u[k - 1][n - 1])))  # exact input, so no correction
            else:
                f = spawn(call("fine", k, n - 1, u[k - 1][n - 1]))
                g[k][n] = spawn(call("coarse", k, n - 1, row[n - 1]))
                row.append(spawn(corrected(f, g[k][n], g[k - 1][n])))
        u.append(row)

    try:
        previous = await u[0][n_blocks]
        changes: list[float] = []
        for k in range(1, limit + 1):
            final = await u[k][n_blocks]
            change = float((final.float() - previous.float()).abs().max())
            changes.append(change)
            exact = k == n_blocks
            if exact or (tol > 0 and change <= tol) or k == limit:
                return final, _stats(k, exact, change, counts, changes)
            if on_iteration is not None:
                on_iteration(k, blocks[k - 1].stop)
            previous = final
        raise AssertionError("unreachable: the loop returns at k == limit")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def correct(fine: torch.Tensor, g_new: torch.Tensor, g_old: torch.Tensor) -> torch.Tensor:
    """The parareal update F + (G_new - G_old), computed in float32 whatever the solves' dtype (fp16 on a GPU,
    where the difference of two nearby coarse solves would lose most of its digits), then returned in F's dtype.
    Where G_new equals G_old the correction is exactly zero and F comes back unchanged."""
    out = fine.float() + (g_new.float() - g_old.float())
    return out.to(fine.dtype)


class _BlockGate:
    """One block's solver, one solve at a time; waiting calls go in priority order (lowest first)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[tuple[int, int], int, asyncio.Future]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, priority: tuple[int, int]) -> AsyncIterator[None]:
        if self._busy:
            granted = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (priority, next(self._order), granted))
            try:
                await granted
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # handed the turn just as it was cancelled: pass it on
                raise
        self._busy = True
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            _, _, granted = heapq.heappop(self._waiting)
            if not granted.done():
                granted.set_result(None)  # the turn passes on directly: the gate stays busy
                return
        self._busy = False


def _stats(k: int, exact: bool, change: float, counts: dict[str, int], changes: list[float]) -> PararealStats:
    return PararealStats(k, exact, change, counts["fine"], counts["coarse"], counts["evals"], tuple(changes))


@dataclass(frozen=True)
class Schedule:
    """Modelled timing of one parareal solve, in UNet evaluations (one serial step = 1)."""

    latency: float  # when the final latents of the stopping iteration are known
    serial_latency: float  # T: the serial path's steps, one after another
    evals: int  # evaluations started by then (every one the result needs, plus speculative ones)

    @property
    def latency_ratio(self) -> float:
        return self.latency / self.serial_latency

    @property
    def compute_ratio(self) -> float:
        return self.evals / self.serial_latency


def schedule(block_lengths: Sequence[int], iterations: int, max_iters: int | None = None) -> Schedule:
    """Latency of parareal that stops after `iterations`, with one actor per block (list scheduling).

    Block n's actor runs F_n and G_n; an actor runs one call at a time, whichever of its ready calls can
    start first (ties: earlier iteration, coarse before fine). Every call of iterations up to the cap is
    available, as in `parareal()`, so speculative fine solves of the next iteration compete for actors; those
    started before the result is known count in `evals`. Hand-off and correction arithmetic cost nothing here.
    """
    n_blocks = len(block_lengths)
    if n_blocks < 1 or any(s < 1 for s in block_lengths):
        raise ValueError(f"block lengths must be positive, got {list(block_lengths)}")
    cap = n_blocks if max_iters is None else min(max_iters, n_blocks)
    if n_blocks == 1:
        return Schedule(float(block_lengths[0]), float(block_lengths[0]), block_lengths[0])
    if not 1 <= iterations <= cap:
        raise ValueError(f"iterations must be in 1..{cap}, got {iterations}")
    # Calls: (name) -> (actor, cost, iteration, order, inputs); values: U(k, n) -> calls it waits for.
    calls: dict[tuple, tuple[int, int, int, int, list[tuple]]] = {}
    value_deps: dict[tuple[int, int], list[tuple]] = {(0, 0): []}
    for n in range(1, n_blocks + 1):
        calls[("G", 0, n)] = (n - 1, 1, 0, 0, [("U", 0, n - 1)])
        value_deps[(0, n)] = [("G", 0, n)]
    for k in range(1, cap + 1):
        value_deps[(k, 0)] = []
        for n in range(1, n_blocks + 1):
            if n < k:
                value_deps[(k, n)] = value_deps[(k - 1, n)]
                continue
            calls[("F", k, n)] = (n - 1, block_lengths[n - 1], k, 1, [("U", k - 1, n - 1)])
            if n == k:
                value_deps[(k, n)] = [("F", k, n)]
            else:
                calls[("G", k, n)] = (n - 1, 1, k, 0, [("U", k, n - 1)])
                value_deps[(k, n)] = [("F", k, n), ("G", k, n), ("G", k - 1, n)]

    finish: dict[tuple, float] = {}
    start: dict[tuple, float] = {}

    def ready_at(dep: tuple) -> float | None:
        if dep[0] == "U":
            times = [ready_at(d) for d in value_deps[(dep[1], dep[2])]]
            return None if any(t is None for t in times) else max([0.0, *times])
        return finish.get(dep)

    free = [0.0] * n_blocks
    pending = set(calls)
    while pending:
        best = None
        for name in pending:
            actor, cost, k, order, inputs = calls[name]
            times = [ready_at(d) for d in inputs]
            if any(t is None for t in times):
                continue
            key = (max([free[actor], *times]), k, order, name)
            if best is None or key < best:
                best = key
        assert best is not None, "a call whose inputs can never be ready"
        t0, _, _, name = best
        actor, cost = calls[name][0], calls[name][1]
        start[name], finish[name] = t0, t0 + cost
        free[actor] = t0 + cost
        pending.discard(name)

    latency = ready_at(("U", iterations, n_blocks))
    assert latency is not None
    evals = sum(cost for name, (_, cost, *_rest) in calls.items() if start[name] < latency)
    return Schedule(latency, float(sum(block_lengths)), evals)
