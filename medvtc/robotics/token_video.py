"""Kept visual tokens drawn over the camera frames, and mp4 videos of rollout episodes.

    maps = token_maps(policy)              # per camera, after a forward pass of the policy
    frame = draw_token_map(obs["agentview"], maps[0], scale=2)
    with EpisodeRecorder("ep.mp4", policy, cameras=("agentview", "wrist")) as rec:
        rec.add(obs, step=0)               # after each select_action: the frame and its tokens

Each camera's image is cut into the policy's token grid (16 x 16 cells of 8 px for 128 px images
at stride 8) and every cell shows what the compressor did with that token:

- selection (`random`, `divprune`): kept cells boxed in green, dropped cells darkened;
- merging / pooling (`tome`, `pooling`): each output's representative cell boxed (ToMe's
  surviving token, the pooling window's centre);
- attention (`stc`: learned queries over all tokens): cells tinted red by the attention mass
  they receive from the kept queries, each query's most-attended cell boxed;
- `compressor_vla`: STC's attention as the red tint, plus SRC's most-attended cell of every
  window boxed (what the spatial tokens mostly carry);
- the uncompressed policy and LeRobot's ACT keep every token: the frames are shown as they are.

Tokens are computed once per action chunk, so between two predictions a frame shows the tokens
of the chunk being executed (the caption says at which step they were computed).

Videos are H.264 (libx264, yuv420p) written with PyAV, which LeRobot already depends on; a video
is written to a temporary file and renamed when the episode ends, so a file that exists is whole.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

KEPT_COLOR = np.array([40, 255, 40], dtype=np.float32)
HEAT_COLOR = np.array([255, 40, 40], dtype=np.float32)
DIMMED = 0.35  # brightness of dropped cells
HEAT_ALPHA = 0.6  # tint of the most-attended cell
CAPTION_HEIGHT = 16


@dataclass
class TokenMap:
    """What one camera's compressor kept, on its token grid (batch item 0).

    grid: (h, w) token grid; kept: bool [h*w] cells to box; weight: float [h*w] in [0, 1]
    (attention mass, min-max scaled) or None; dim_rest: the output is a pure selection, so the
    cells not kept were dropped; label: a short description for captions.
    """

    grid: tuple[int, int]
    kept: np.ndarray
    weight: np.ndarray | None
    dim_rest: bool
    label: str


def _norm(w: np.ndarray) -> np.ndarray:
    """Min-max scaled to [0, 1] (uniform attention: all zeros, no tint)."""
    if not w.size:
        return w
    lo, hi = float(w.min()), float(w.max())
    return (w - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(w)


def output_map(out: Any, grid: tuple[int, int], name: str) -> TokenMap:
    """A `TokenMap` from a core `CompressorOutput` (index and/or assign), batch item 0."""
    n = grid[0] * grid[1]
    kept = np.zeros(n, dtype=bool)
    weight = None
    if out.assign is not None:
        a = out.assign[0].detach().float().cpu().numpy()  # [K, N]
        weight = _norm(a.sum(0))
        if out.index is None:
            kept[a.argmax(1)] = True
    if out.index is not None:
        kept[out.index[0].detach().cpu().numpy().astype(int)] = True
    selection = out.index is not None and out.assign is None and (out.size is None or bool((out.size[0] == 1).all()))
    return TokenMap(grid, kept, weight, selection, f"{name}: {out.tokens.shape[1]} of {n} tokens")


def token_maps(policy: Any) -> list[TokenMap] | None:
    """Per camera, what the policy's compressors kept in its latest forward pass (batch item 0).

    None for a policy that keeps all its visual tokens (`compressor=none`, ACT), or before the
    first forward pass. `compressor_vla` needs `policy.model.keep_inputs = True` during that
    pass (its output carries no per-cell mapping: the STC and SRC parts are recomputed from the
    kept inputs, which `EpisodeRecorder` does for you).
    """
    import torch

    model = getattr(policy, "model", None)
    outs = getattr(model, "last_compression", None)
    if not outs:
        return None
    grid = tuple(int(g) for g in model.grid)
    name = model.compressor_name
    maps = []
    for i, out in enumerate(outs):
        comp = model.compressors[0 if len(model.compressors) == 1 else i]
        if out.index is None and out.assign is None and hasattr(comp, "stc") and hasattr(comp, "src"):
            inputs = model.last_inputs
            if inputs is None or comp.last_split is None:
                return None
            tokens, text, mask = inputs[0][i][:1], inputs[1][:1], inputs[2][:1]
            if not comp.use_instruction:
                text, mask = None, None
            k_stc, k_src, win = comp.last_split
            with torch.no_grad():
                stc = comp.stc.compress(tokens, grid, k_stc, text=text, text_mask=mask, scores=None)
                src = comp.src.compress_windows(tokens, grid, win, text, mask)
            n = grid[0] * grid[1]
            kept = np.zeros(n, dtype=bool)
            kept[src.index[0].cpu().numpy().astype(int)] = True
            weight = _norm(stc.assign[0].float().sum(0).cpu().numpy())
            maps.append(TokenMap(grid, kept, weight, False, f"{name}: {k_stc} STC + {k_src} SRC of {n} tokens"))
        else:
            maps.append(output_map(out, grid, name))
    return maps


def _cell_edges(size: int, cells: int) -> np.ndarray:
    return np.round(np.arange(cells + 1) * size / cells).astype(int)


def draw_token_map(frame: np.ndarray, tmap: TokenMap | None, scale: int = 1) -> np.ndarray:
    """uint8 [H, W, 3] frame -> uint8 [H*scale, W*scale, 3] with the kept tokens drawn over it."""
    img = np.asarray(frame, dtype=np.uint8)
    if scale > 1:
        img = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
    if tmap is None:
        return np.ascontiguousarray(img)
    out = img.astype(np.float32)
    h, w = out.shape[:2]
    gh, gw = tmap.grid
    ys, xs = _cell_edges(h, gh), _cell_edges(w, gw)
    row = np.searchsorted(ys, np.arange(h), side="right") - 1
    col = np.searchsorted(xs, np.arange(w), side="right") - 1
    cell = row[:, None] * gw + col[None, :]  # [H, W] token id of each pixel
    if tmap.dim_rest:
        out *= np.where(tmap.kept[cell], 1.0, DIMMED)[..., None]
    if tmap.weight is not None:
        alpha = (HEAT_ALPHA * tmap.weight[cell])[..., None]
        out = out * (1 - alpha) + HEAT_COLOR * alpha
    t = max(1, min(scale, 3) // 2 + (1 if scale >= 4 else 0))  # box line width in pixels
    for idx in np.flatnonzero(tmap.kept):
        r, c = divmod(int(idx), gw)
        y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
        tt = min(t, max(1, (y1 - y0) // 3), max(1, (x1 - x0) // 3))
        out[y0:y0 + tt, x0:x1] = KEPT_COLOR
        out[y1 - tt:y1, x0:x1] = KEPT_COLOR
        out[y0:y1, x0:x0 + tt] = KEPT_COLOR
        out[y0:y1, x1 - tt:x1] = KEPT_COLOR
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _caption(width: int, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    bar = Image.new("RGB", (width, CAPTION_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(bar).text((3, 1), text, fill=(255, 255, 255), font=ImageFont.load_default())
    return np.asarray(bar, dtype=np.uint8)


def compose_frame(obs: Mapping[str, np.ndarray], cameras: Sequence[str], maps: Sequence[TokenMap] | None,
                  scale: int, caption: str = "") -> np.ndarray:
    """The cameras side by side with their token maps, a caption bar on top; even sides (H.264)."""
    panels = [draw_token_map(obs[cam], maps[i] if maps is not None and i < len(maps) else None, scale)
              for i, cam in enumerate(cameras)]
    body = np.concatenate(panels, axis=1)
    img = np.concatenate([_caption(body.shape[1], caption), body], axis=0) if caption else body
    pad_h, pad_w = img.shape[0] % 2, img.shape[1] % 2
    if pad_h or pad_w:
        img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)))
    return np.ascontiguousarray(img)


class VideoWriter:
    """Frames -> an H.264 mp4 at `path`, written to a temporary file and renamed on `close()`.

    `close(keep=False)` (or an exception inside `with`) removes the temporary file instead.
    """

    def __init__(self, path: str | os.PathLike, fps: int = 20) -> None:
        self.path = Path(path)
        self.fps = int(fps)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        os.chmod(self.tmp, 0o644)  # mkstemp makes it private; a video is for people to watch
        self._container = None
        self._stream = None
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        import av

        frame = np.ascontiguousarray(frame, dtype=np.uint8)
        if self._container is None:
            self._container = av.open(str(self.tmp), mode="w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=self.fps)
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "23", "preset": "veryfast"}
            self._stream.codec_context.thread_count = 1
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            self._container.mux(packet)
        self.frames += 1

    def close(self, keep: bool = True) -> None:
        try:
            if self._container is not None:
                for packet in self._stream.encode():
                    self._container.mux(packet)
                self._container.close()
                self._container = None
            if keep and self.frames:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(keep=exc_type is None)


class EpisodeRecorder:
    """One rollout episode as an mp4: every frame with the kept tokens of the chunk in use.

    Call `add(obs, step)` after each `select_action` (the tokens are then those of the chunk the
    action came from) and once more for the last observation; `close(keep)` finishes the file.
    """

    def __init__(self, path: str | os.PathLike, policy: Any, cameras: Sequence[str], caption: str = "",
                 fps: int = 20, scale: int | None = None) -> None:
        self.policy = policy
        self.cameras = tuple(cameras)
        self.caption = caption
        self.scale = scale
        self.writer = VideoWriter(path, fps)
        self.model = getattr(policy, "model", None)
        self._had_keep = getattr(self.model, "keep_inputs", None)
        if self._had_keep is not None:
            self.model.keep_inputs = True
        self._seen = None  # the last_compression list the current maps were made from
        self._maps: list[TokenMap] | None = None
        self._chunk_step = 0

    @property
    def path(self) -> Path:
        return self.writer.path

    def add(self, obs: Mapping[str, np.ndarray], step: int) -> None:
        current = getattr(self.model, "last_compression", None)
        if current is not None and current is not self._seen:
            self._seen = current
            self._maps = token_maps(self.policy)
            self._chunk_step = step
        size = int(np.asarray(obs[self.cameras[0]]).shape[0])
        scale = self.scale or max(1, 256 // max(size, 1))
        label = self._maps[0].label if self._maps else "all visual tokens kept"
        text = f"{self.caption}  step {step}  |  {label} (chunk from step {self._chunk_step})"
        self.writer.write(compose_frame(obs, self.cameras, self._maps, scale, text.strip()))

    def close(self, keep: bool = True) -> None:
        if self._had_keep is not None:
            self.model.keep_inputs = self._had_keep
            self.model.last_inputs = None
        self.writer.close(keep)


__all__ = ["EpisodeRecorder", "TokenMap", "VideoWriter", "compose_frame", "draw_token_map", "output_map", "token_maps"]
