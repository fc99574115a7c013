"""MaskGIT sampling and frame-by-frame generation for a :class:`~genie.models.dynamics.DynamicsModel`
(Genie §2.1: 25 steps per frame, random sampling at temperature 2, confidence-based unmasking).

:func:`maskgit_fill` fills one frame from all-masked; :class:`Rollout` keeps a generation's state (the frames,
their actions, the KV cache of the past frames) and applies the speed-ups from outside the model: compiled
blocks, the CUDA-graph step, autocast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from genie.nn import KVCache, compile_blocks, compiled_when
from genie.nn.graph import CapturedStep

if TYPE_CHECKING:
    from genie.models.dynamics import DynamicsModel


@dataclass
class SamplingConfig:
    """MaskGIT sampling of one frame (Genie: 25 steps, temperature 2; CoinRun case study: temperature 1).

    Each step samples every still-masked token from ``softmax(logits / temperature)`` (``temperature = 0``:
    argmax), then keeps the ones the model is most confident in (the sampled token's probability) and
    re-masks the rest; the number left masked follows the cosine schedule ``S·cos(π/2 · k/steps)``.
    ``context_frames`` is the model's memory including the frame being generated (16 in the paper).
    ``use_cache`` reuses the keys/values of past frames (a KV cache over the causal temporal attention),
    so each step costs one frame instead of the whole window. ``compile`` runs the transformer blocks
    (the dynamics model's and, in :class:`~genie.models.Genie`, the tokenizer decoder's) through
    ``torch.compile`` once the context window is full: a one-off compile of seconds, then faster steps
    (while the window fills, steps run eagerly; needs torch >= 2.6 and, on a CPU, a C++ compiler).
    ``"auto"`` (the default) compiles where a compiler exists (a C++ compiler for the CPU, Triton for CUDA),
    once a session has run ``context_frames`` full-window steps eagerly, so that short clips (evaluation,
    validation, GIFs) never pay for a compile and long sessions (play) do once; it runs eagerly where there is
    no compiler. ``true`` compiles from the first full-window step, ``false`` never. (A CUDA graph, see below, is
    recorded at the first full-window step: with ``"auto"`` it holds eager kernels; ``true`` records compiled ones.)
    ``cuda_graph`` (with the cache, on a CUDA device, rotary or no positions) records a whole frame's
    generation - every MaskGIT pass and the cache update - as one CUDA graph once the window is full, and
    replays it for every later frame: the same frames, without launching each of its many small kernels
    from Python (which sets the frame rate on a GPU). Off CUDA it changes nothing.
    ``precision``: ``fp32``, or ``bf16`` / ``fp16`` to run the networks under ``torch.autocast`` (the keys and
    values cached in that dtype; the sampling itself stays fp32): faster on a GPU (docs/benchmarks.md); the
    frames differ by rounding.
    """

    steps: int = 25
    temperature: float = 2.0
    # MaskGIT's annealed choice noise: Gumbel noise of this scale, falling linearly to 0 over the steps, is
    # added to the confidences that decide which draws stay (0: the most confident stay, no noise).
    confidence_noise: float = 0.0
    context_frames: int = 16
    use_cache: bool = True
    compile: bool | str = "auto"
    cuda_graph: bool = True
    precision: str = "fp32"

    def __post_init__(self) -> None:
        for name, kind in (
            ("steps", int),
            ("context_frames", int),
            ("temperature", float),
            ("confidence_noise", float),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
                raise ValueError(
                    f"sampling {name} must be a {'whole ' if kind is int else ''}number, got {value!r}"
                )
        if self.precision not in _AUTOCAST_DTYPES:
            raise ValueError(
                f"sampling precision must be one of {sorted(_AUTOCAST_DTYPES)}, got {self.precision!r}"
            )
        if self.compile not in (True, False, "auto"):
            raise ValueError(f"sampling compile must be true, false or auto, got {self.compile!r}")
        if self.steps < 1:
            raise ValueError(f"sampling steps must be >= 1, got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.confidence_noise < 0:
            raise ValueError(f"confidence_noise must be >= 0 (0 = off), got {self.confidence_noise}")
        if self.context_frames < 2:
            raise ValueError(
                f"context_frames must be >= 2 (a past frame and the new one), got {self.context_frames}"
            )

    def compiles(self, device: torch.device | str) -> bool:
        """Whether generation on ``device`` runs compiled blocks: ``compile``, with ``"auto"`` resolved to
        whether ``torch.compile`` has a compiler there."""
        if self.compile == "auto":
            return compiler_available(torch.device(device).type)
        return bool(self.compile)

    def autocast(self, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
        """The ``precision``'s autocast context on ``device`` (nothing for fp32)."""
        dtype = _AUTOCAST_DTYPES[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        device_type = torch.device(device).type
        try:
            return torch.autocast(device_type, dtype=dtype)
        except RuntimeError as err:  # a device type autocast does not know
            raise ValueError(
                f"sampling precision {self.precision} needs torch.autocast on {device_type}, which fails "
                f"({str(err).splitlines()[0]}); use sampling.precision=fp32"
            ) from None


_AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def compiler_available(device_type: str) -> bool:
    """Whether ``torch.compile``'s default backend can build kernels for ``device_type`` here: a C++ compiler
    for the CPU (``$CXX``, else ``c++``/``g++``/``clang++`` on the PATH), Triton for CUDA; torch >= 2.6
    (``torch.compiler.set_stance``, which generation uses to compile only the full-window steps); and
    torch.compile not switched off (``TORCH_COMPILE_DISABLE=1``)."""
    if getattr(torch.compiler, "set_stance", None) is None or torch._dynamo.config.disable:
        return False
    return _has_compiler(device_type)


@functools.cache
def _has_compiler(device_type: str) -> bool:
    if device_type == "cpu":
        names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
        return any(name and shutil.which(name) for name in names)
    if device_type == "cuda":
        return importlib.util.find_spec("triton") is not None
    return False


def maskgit_schedule(num_tokens: int, steps: int) -> list[int]:
    """How many tokens are still masked after each step: cosine, strictly decreasing, 0 after the last."""
    left, prev = [], num_tokens
    for k in range(1, steps + 1):
        n = math.floor(num_tokens * math.cos(math.pi / 2 * k / steps))
        n = max(0, min(n, prev - 1)) if k < steps else 0
        left.append(n)
        prev = n
    return left


def seeded_generator(device: torch.device | str, seed: int) -> torch.Generator:
    """A generator for sampling on ``device``: on that device where torch has generators for it (CPU, CUDA),
    else on the CPU (XLA, MPS) - the samplers here draw on the generator's device and move the draws."""
    device = torch.device(device)
    where = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    return torch.Generator(device=where).manual_seed(seed)


def uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


@torch.no_grad()
def maskgit_fill(
    predict: Callable[[Tensor, Tensor], Tensor],
    batch: int,
    num_tokens: int,
    mask_id: int,
    steps: int,
    temperature: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    uniforms: Sequence[Tensor] | None = None,
    log_probs: bool = False,
    confidence_noise: float = 0.0,
) -> Tensor:
    """Fill one frame of ``num_tokens`` tokens from all-masked with MaskGIT.

    ``predict(ids_BS, positions_BM) -> logits_BMV`` gives the logits of the still-masked positions
    ``positions_BM`` (every row has the same number of them, in increasing order) given the frame ``ids_BS``;
    with ``log_probs`` they are log-probabilities already (a copy-head model's), used as they are.
    ``uniforms``: the draws of each pass, ``(B, M, W)`` for the M tokens it samples (see
    :func:`maskgit_draws`; W = :func:`draws_per_token`: the token's draw, then its confidence noise), drawn
    beforehand (a replayed CUDA graph cannot draw them); by default each pass draws its own from
    ``generator`` - the same numbers, in the same order. ``confidence_noise``: MaskGIT's annealed Gumbel
    noise on the confidences (see :class:`SamplingConfig`).
    """
    device = device or torch.device("cpu")
    width = draws_per_token(temperature, confidence_noise)
    ids = torch.full((batch, num_tokens), mask_id, dtype=torch.long, device=device)
    pos = torch.arange(num_tokens, device=device).expand(batch, -1)  # (B, M): the masked positions
    for k, n_left in enumerate(maskgit_schedule(num_tokens, steps)):
        sub = predict(ids, pos).float()  # (B, M, V)
        # untempered log-probabilities: the confidence (at temperature 1, the draw's too)
        logp = sub if log_probs else sub.log_softmax(-1)
        u_BMW = None
        if width:
            u_BMW = (
                uniforms[k]
                if uniforms is not None
                else uniform((batch, sub.shape[1], width), generator, device)
            )
        if temperature > 0:  # a categorical draw from softmax(logits / temperature) by inverting its CDF:
            # one uniform per token (Gumbel-max would need one per token and code, and two logs of each)
            assert u_BMW is not None
            cdf = (logp.exp() if temperature == 1.0 else (sub / temperature).softmax(-1)).cumsum_(-1)
            pick = torch.searchsorted(cdf, u_BMW[..., :1], right=True)[..., 0].clamp_(max=sub.shape[-1] - 1)
        else:
            pick = sub.argmax(-1)
        ids = ids.scatter(1, pos, pick)
        if n_left == 0:
            break
        # re-mask the n_left draws the model is least sure of: log p(pick), untempered
        conf_m = logp.gather(-1, pick[..., None])[..., 0]
        if confidence_noise > 0:  # + Gumbel noise, annealed to 0 by the last step (MaskGIT)
            assert u_BMW is not None
            gumbel = -(-u_BMW[..., -1].clamp(1e-20, 1.0).log()).clamp_min(1e-20).log()
            conf_m = conf_m + confidence_noise * (1.0 - (k + 1) / steps) * gumbel
        pos = pos.gather(1, conf_m.topk(n_left, dim=1, largest=False).indices).sort(dim=1).values
        ids = ids.scatter(1, pos, mask_id)
    return ids


def draws_per_token(temperature: float, confidence_noise: float) -> int:
    """Uniform draws :func:`maskgit_fill` takes per sampled token and pass: one for the categorical draw
    (temperature > 0), one for the confidence noise (when on)."""
    return int(temperature > 0) + int(confidence_noise > 0)


def maskgit_draws(num_tokens: int, steps: int) -> list[int]:
    """How many tokens each pass of :func:`maskgit_fill` samples (the sizes of its uniform draws)."""
    sizes = [num_tokens]
    for n_left in maskgit_schedule(num_tokens, steps)[:-1]:
        if n_left == 0:
            break
        sizes.append(n_left)
    return sizes


def _filluniform(out: Tensor, generator: torch.Generator | None) -> None:
    """``out`` ← uniform draws, the numbers ``uniform(out.shape, generator, out.device)`` would give."""
    if generator is None or generator.device == out.device:
        torch.rand(out.shape, generator=generator, device=out.device, out=out)
    else:
        out.copy_(torch.rand(out.shape, generator=generator, device=generator.device))


def action_ids(actions: Any, device: torch.device | str | None = None) -> Tensor:
    """Action ids as a long tensor on ``device``; floats, bools and strings are refused with one line (an
    action id of 2.7 is a mistake, never action 2)."""
    try:
        a = torch.as_tensor(actions, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"action ids must be integers, got {actions!r:.60} ({err})") from None
    if a.dtype == torch.bool or a.is_floating_point() or a.is_complex():
        raise ValueError(f"action ids must be integers, got {a.dtype} values {a.reshape(-1)[:8].tolist()}")
    return a.long()


class Rollout:
    """Frame-by-frame generation state of a :class:`DynamicsModel`: the frames so far and their actions.

    With ``use_cache`` the past frames' keys/values are kept in a sliding :class:`KVCache` of
    ``context_frames - 1`` frames; each MaskGIT step then runs the transformer on the new frame only, and the
    finished frame is appended once. Without it, every step recomputes the window (the last
    ``context_frames - 1`` frames, treated like a training clip: its first frame has "no action yet").
    Both give the same frames while the rollout fits in the window. Past it they differ, by design: the
    cached rollout is a sliding-window KV cache - each frame's keys/values were computed once, when it was
    added, so the oldest frame in the window keeps the action that produced it (training gives a clip's
    first frame "no action yet") and, in layers past the first, carries the history before the window. The
    uncached rollout is the paper's 16-frame memory exactly (the window re-encoded as a training clip at
    every step) at the cost of encoding ``context_frames - 1`` frames per step. With ``sampling.cuda_graph`` the frames
    generated once the cache is full come from one :class:`~genie.nn.graph.CapturedStep` (a CUDA graph on
    a GPU), fed through fixed input tensors; they are the same frames.
    """

    def __init__(self, model: DynamicsModel, sampling: SamplingConfig | None = None) -> None:
        self.model = model
        self.sampling = sampling or SamplingConfig()
        self.frames: list[Tensor] = []  # ids_BS per frame
        self.actions: list[Tensor] = []  # the action id that produced each frame (num_actions for the first)
        self.cache: KVCache | None = None
        self._captured: CapturedStep | None = None
        self._static: dict[str, Tensor] = {}  # the captured step's inputs
        self._static_uniforms: list[Tensor] = []
        self._steady_steps = 0  # full-window steps of this session ("auto" compiles after context_frames)
        device = next(iter(model.parameters())).device
        self.compiles = self.sampling.compiles(device)  # "auto" resolved for the model's device
        # modules whose blocks compile in place on the first compiled step (not before: a short clip's rollout,
        # e.g. in validation, must leave a model it never compiles for as it was, or its training steps compile)
        self.compile_targets: list[nn.Module] = [model]

    @property
    def tokens(self) -> Tensor:
        """All frames so far, ``tokens_BTHW``."""
        b = self.frames[0].shape[0]
        return torch.stack(self.frames, 1).reshape(b, len(self.frames), *self.model.cfg.hw)

    def compiled(self, steady: bool) -> contextlib.AbstractContextManager[None]:
        """With ``sampling.compile``: compiled blocks when ``steady``, eager otherwise (see :func:`compiled_when`)."""
        if not self.compiles:
            return contextlib.nullcontext()
        settled = self.sampling.compile is True or self._steady_steps > self.sampling.context_frames
        if steady and settled:
            while self.compile_targets:
                compile_blocks(self.compile_targets.pop(), dynamic=False)
        return compiled_when(steady and settled)

    def _window(self) -> tuple[Tensor, Tensor]:
        keep = self.sampling.context_frames - 1
        ids = torch.stack(self.frames[-keep:], 1)
        acts = torch.stack(self.actions[-keep:], 1).clone()
        acts[:, 0] = self.model.cfg.num_actions
        return ids, acts

    def _prime(self) -> None:
        self.cache = KVCache(max_frames=self.sampling.context_frames - 1)
        ids, acts = self._window()
        self.model.extend_cache(ids, acts, self.cache)

    @torch.no_grad()
    def start(self, prompt_tokens_BTHW: Tensor, prompt_actions_BT1: Tensor | None = None) -> None:
        """Begin from prompt frames (a single tokenized image is enough)."""
        model = self.model
        b, t, h, w = prompt_tokens_BTHW.shape
        if (h, w) != model.cfg.hw:
            raise ValueError(f"expected a {model.cfg.hw} token grid per frame, got {(h, w)}")
        if t > 1 and prompt_actions_BT1 is None:
            raise ValueError(
                f"a {t}-frame prompt needs the {t - 1} actions between its frames (e.g. inferred by the LAM)"
            )
        acts_BT = model.frame_actions(prompt_actions_BT1 if t > 1 else None, b, t)
        ids = prompt_tokens_BTHW.reshape(b, t, h * w).long()
        self.frames = list(ids.unbind(1))
        self.actions = list(acts_BT.unbind(1))
        self.cache = None
        self._captured = None
        self._steady_steps = 0
        if self.sampling.use_cache:
            # a one-off shape: never worth a compile
            with self.compiled(False), self.sampling.autocast(ids.device):
                self._prime()

    @torch.no_grad()
    def step(self, actions_B: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Generate the next frame from ``actions_B`` (one action id per batch row); returns ``tokens_BHW``."""
        if not self.frames:
            raise RuntimeError("call start(prompt_tokens) before step()")
        with self.sampling.autocast(self.frames[0].device):
            return self._step(actions_B, generator)

    def _step(self, actions_B: Tensor, generator: torch.Generator | None) -> Tensor:
        model, cfg = self.model, self.sampling
        b = self.frames[0].shape[0]
        actions_B = action_ids(actions_B, self.frames[0].device).reshape(-1)
        if actions_B.shape[0] != b:
            raise ValueError(f"expected {b} actions (one per rollout), got {actions_B.shape[0]}")
        na = model.cfg.num_actions
        if actions_B.min() < 0 or actions_B.max() >= na:
            raise ValueError(f"action ids must be in [0, {na}), got {actions_B.tolist()}")
        s = self.frames[0].shape[1]
        # compiled (when asked) once every step has the same shapes: the cache or the window is full
        window = cfg.context_frames - 1
        full = (self.cache.frames if self.cache is not None else len(self.frames)) >= window
        self._steady_steps += int(full)
        if full and cfg.cuda_graph and self.cache is not None and model.cfg.st.pos_emb != "learned":
            with self.compiled(True):
                new = self._captured_frame(actions_B, generator)
            self.frames.append(new)
            self.actions.append(actions_B)
            return new.reshape(b, *model.cfg.hw)

        last_B1S = self.frames[-1][:, None]  # the copy head's source (if the model has one)
        if self.cache is not None:
            predict = self._cached_predict(actions_B[:, None], last_B1S)
        else:
            past_ids, past_acts = self._window()
            acts = torch.cat((past_acts, actions_B[:, None]), 1)
            prev = torch.cat((past_ids[:, :1], past_ids), 1)  # only the new (last) frame's output is used

            def predict(ids_BS: Tensor, pos_BM: Tensor) -> Tensor:
                ids = torch.cat((past_ids, ids_BS[:, None]), 1)
                return model.forward_ids(ids, acts, prev_ids_BTS=prev, positions_BM=pos_BM)

        with self.compiled(full):
            new = self._fill(predict, b, s, self.frames[0].device, generator=generator)
            self.frames.append(new)
            self.actions.append(actions_B)
            if self.cache is not None:
                st = model.cfg.st
                if st.pos_emb == "learned" and self.cache.position + 1 >= st.max_frames:
                    with self.compiled(False):
                        self._prime()  # learned frame positions cannot count past max_frames: re-encode
                else:
                    model.extend_cache(new[:, None], actions_B[:, None], self.cache)
        return new.reshape(b, *model.cfg.hw)

    def _fill(
        self,
        predict: Callable[[Tensor, Tensor], Tensor],
        b: int,
        s: int,
        device: torch.device,
        generator: torch.Generator | None = None,
        uniforms: Sequence[Tensor] | None = None,
    ) -> Tensor:
        """:func:`maskgit_fill` of one frame with this rollout's model and sampling (a copy-head model's
        outputs are log-probabilities already)."""
        cfg = self.sampling
        return maskgit_fill(
            predict,
            b,
            s,
            self.model.mask_id,
            cfg.steps,
            cfg.temperature,
            generator,
            device,
            uniforms=uniforms,
            log_probs=self.model.copy_head is not None,
            confidence_noise=cfg.confidence_noise,
        )

    def _cached_predict(self, act_B1: Tensor, last_B1S: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        """MaskGIT's ``predict`` for a cached step: the new frame after the cache, with its action
        (``last_B1S``, the frame before, is the copy head's source if the model has one)."""
        model, cache = self.model, self.cache
        assert cache is not None

        def predict(ids_BS: Tensor, pos_BM: Tensor) -> Tensor:
            return model.forward_ids(
                ids_BS[:, None], act_B1, cache, prev_ids_BTS=last_B1S, positions_BM=pos_BM
            )

        return predict

    def _captured_frame(self, actions_B: Tensor, generator: torch.Generator | None) -> Tensor:
        """A full-window cached step through the :class:`CapturedStep`: its inputs copied into fixed tensors
        (the action, the last frame, every pass's uniform draws), then the step (replayed, on a GPU)."""
        last = self.frames[-1]
        if self._captured is None:
            b, s = last.shape
            self._static = {"actions_B1": actions_B[:, None].clone(), "last_B1S": last[:, None].clone()}
            self._static_uniforms = []
            width = draws_per_token(self.sampling.temperature, self.sampling.confidence_noise)
            if width:
                sizes = maskgit_draws(s, self.sampling.steps)
                self._static_uniforms = [last.new_empty((b, m, width), dtype=torch.float32) for m in sizes]
            assert self.cache is not None
            self._captured = CapturedStep(self._frame_from_static, [self.cache], last.device)
        self._static["actions_B1"].copy_(actions_B[:, None])
        self._static["last_B1S"].copy_(last[:, None])
        for u in self._static_uniforms:
            _filluniform(u, generator)
        return self._captured().clone()

    def _frame_from_static(self) -> Tensor:
        """One cached step reading only the fixed input tensors: the new frame ``ids_BS``, cache updated."""
        model, cache = self.model, self.cache
        assert cache is not None
        act_B1, last_B1S = self._static["actions_B1"], self._static["last_B1S"]
        b, _, s = last_B1S.shape
        predict = self._cached_predict(act_B1, last_B1S)
        uniforms = self._static_uniforms or None
        new = self._fill(predict, b, s, last_B1S.device, uniforms=uniforms)
        model.extend_cache(new[:, None], act_B1, cache)
        return new
