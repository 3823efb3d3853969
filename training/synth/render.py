"""Render synthetic stereo frames: humanoid (pybullet ER_TINY_RENDERER) over the ray-cast scene.

The humanoid is rendered only in a tight window around its projection, with an off-centre OpenGL
frustum so that the window's pixels are exactly the pixels of the full camera ``K`` (checked to
~0.01 px by ``test/test_synth.py``), supersampled ``supersample`` x for anti-aliased edges, then
z-tested against the background's depth and composited. Distorted raw cameras render the window in
the undistorted pinhole image and remap it into the distorted image.

:class:`SynthRenderer` owns one pybullet DIRECT client; use one per process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from stereo_pose3d.skeleton import SYNTHETIC

from .cameras import BODY_MARGIN_M, CameraView, StereoRig, sample_rig
from .motion import Humanoid, MotionClip, load_clip
from .scene import Background, SceneSpec, render_background, sample_scene

NEAR, FAR = 0.05, 200.0
SELF_OCCLUSION_TOL = 0.15  # m: a joint lies inside its limb; more body than this in front hides it
SCENE_OCCLUSION_TOL = 0.03  # m
NOISE_BANK_SEED = 0x5EED
NOISE_PAD = 64
MAX_RENDER_PIXELS = 160_000  # per humanoid window, after supersampling

# Bones that cast the floor shadow: (joint a, joint b, radius m).
_J = {n: i for i, n in enumerate(SYNTHETIC.joint_names)}
SHADOW_BONES = [
    (_J["right_ankle"], _J["right_knee"], 0.06),
    (_J["right_knee"], _J["right_hip"], 0.07),
    (_J["left_ankle"], _J["left_knee"], 0.06),
    (_J["left_knee"], _J["left_hip"], 0.07),
    (_J["pelvis"], _J["thorax"], 0.14),
    (_J["upper_neck"], _J["head_top"], 0.1),
    (_J["right_wrist"], _J["right_elbow"], 0.05),
    (_J["right_elbow"], _J["right_shoulder"], 0.055),
    (_J["left_wrist"], _J["left_elbow"], 0.05),
    (_J["left_elbow"], _J["left_shoulder"], 0.055),
    (_J["right_hip"], _J["left_hip"], 0.08),
    (_J["right_shoulder"], _J["left_shoulder"], 0.08),
]


def gl_matrices(view: CameraView, window: tuple[int, int, int, int], supersample: int = 1):
    """Column-major OpenGL view and projection matrices (lists of 16 floats) rendering pixels
    ``[u0, u0 + w) x [v0, v0 + h)`` of ``view``'s undistorted pinhole image ``K`` at
    ``supersample`` x resolution.

    pybullet's TinyRenderer samples a pixel at its corner (not its centre) and flips rows, so the
    frustum is shifted by ``(s - 1) / 2s`` px in x and ``(s + 1) / 2s`` px in y: then the average of
    each ``s x s`` block is centred exactly on the full-resolution pixel centre (ROS/OpenCV
    convention: pixel ``(u, v)`` covers ``[u - 0.5, u + 0.5]``).
    """
    u0, v0, w, h = window
    s = supersample
    left = u0 - (s - 1) / (2.0 * s)
    top = v0 - (s + 1) / (2.0 * s)
    K = view.K
    fx, fy, cx, cy, skew = K[0, 0], K[1, 1], K[0, 2], K[1, 2], K[0, 1]
    proj = np.array(
        [
            [2 * fx / w, -2 * skew / w, 1 - 2 * (cx - left) / w, 0.0],
            [0.0, 2 * fy / h, 2 * (cy - top) / h - 1, 0.0],
            [0.0, 0.0, -(FAR + NEAR) / (FAR - NEAR), -2 * FAR * NEAR / (FAR - NEAR)],
            [0.0, 0.0, -1.0, 0.0],
        ]
    )
    world_to_cam = np.eye(4)
    world_to_cam[:3, :3] = view.R_cw
    world_to_cam[:3, 3] = -view.R_cw @ view.C
    gl_view = np.diag([1.0, -1.0, -1.0, 1.0]) @ world_to_cam
    return gl_view.T.reshape(-1).tolist(), proj.T.reshape(-1).tolist()


@dataclass
class Plan:
    """Everything needed to render a sequence deterministically."""

    clip: str
    times: np.ndarray  # (F,) s in the clip
    rig: StereoRig
    scene: SceneSpec
    joints_world: np.ndarray  # (F, J, 3)
    camera_path: np.ndarray | None  # (F, 3) rig translation per frame (follow camera) or None
    seed: int  # per-frame randomness (noise) derives from (seed, frame)

    @property
    def num_frames(self) -> int:
        return len(self.times)

    def rig_at(self, frame: int) -> StereoRig:
        return (
            self.rig if self.camera_path is None else self.rig.translated(self.camera_path[frame])
        )


@dataclass
class Frame:
    """One rendered stereo frame: ``images (2, H, W, 3) uint8`` RGB, full person silhouettes
    ``masks (2, H, W) bool`` (before occlusion) and the label dict (the keys of
    docs/synthetic_data.md, "Dataset on disk")."""

    images: np.ndarray
    masks: np.ndarray
    labels: dict


class SynthRenderer:
    """Renders synthetic stereo frames; owns a pybullet DIRECT client with the humanoid."""

    def __init__(self, width: int = 640, height: int = 480, supersample: int = 2) -> None:
        import pybullet as p

        self.p = p
        self.width, self.height = int(width), int(height)
        self.supersample = int(supersample)
        self.client = p.connect(p.DIRECT)
        self.humanoid = Humanoid(self.client)
        bank_rng = np.random.default_rng(NOISE_BANK_SEED)
        self._noise = bank_rng.standard_normal(
            (self.height + NOISE_PAD, self.width + NOISE_PAD, 3), dtype=np.float32
        )
        self._floor_cache: dict[str, float] = {}

    def close(self) -> None:
        if self.client is not None and self.p.isConnected(self.client):
            self.p.disconnect(self.client)
        self.client = None

    def __enter__(self) -> SynthRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------- planning

    def joints_at(self, clip: MotionClip, times: np.ndarray) -> np.ndarray:
        """World joints ``(F, 16, 3)`` of ``clip`` at ``times`` (s)."""
        return np.stack([self.humanoid.pose_joints(clip.pose(float(t))) for t in times])

    def floor_height(self, clip: MotionClip) -> float:
        """Floor z for a clip: feet (0.05 m below the ankle frame) touch it at their lowest."""
        if clip.name not in self._floor_cache:
            J = self.joints_at(clip, np.linspace(0.0, clip.duration, 90))
            ankles = [_J["right_ankle"], _J["left_ankle"]]
            self._floor_cache[clip.name] = min(0.0, float(J[:, ankles, 2].min()) - 0.05)
        return self._floor_cache[clip.name]

    def plan(
        self,
        seed_sequence: np.random.SeedSequence,
        clip_name: str,
        times: np.ndarray,
        *,
        raw: bool = False,
        follow: bool | None = False,
        occluder_probability: float = 0.3,
    ) -> Plan:
        """Sample a rig and scene for ``clip_name`` at ``times``.

        ``follow=None`` tries a static rig first and falls back to a follow camera (the rig
        translates with the person's smoothed horizontal path) for clips that travel far.
        """
        cam_ss, scene_ss, frame_ss = seed_sequence.spawn(3)
        cam_rng = np.random.default_rng(cam_ss)
        clip = load_clip(clip_name)
        times = np.asarray(times, dtype=np.float64)
        J = self.joints_at(clip, times)
        floor_z = self.floor_height(clip)
        path = None
        rig = None
        if not follow:
            try:
                rig = self._sample_rig(cam_rng, J, raw, floor_z, (2.0, 6.0))
            except RuntimeError:
                if follow is not None:
                    raise
        if rig is None:
            path = _follow_path(J, times)
            rig = self._sample_rig(cam_rng, J - path[:, None, :], raw, floor_z, (2.0, 6.0))
        rigs = [rig] if path is None else [rig.translated(d) for d in path]
        cam_xy = np.concatenate([[r.left.C[:2], r.right.C[:2]] for r in rigs])
        person_centre = 0.5 * (J.reshape(-1, 3).min(0) + J.reshape(-1, 3).max(0))
        scene = sample_scene(
            np.random.default_rng(scene_ss),
            person_xy=J.reshape(-1, 3)[:, :2],
            camera_xy=cam_xy,
            camera_centre=0.5 * (rig.left.C + rig.right.C),
            person_centre=person_centre if path is None else J[0].mean(0),
            floor_z=floor_z,
            allow_room=path is None,
            occluder_probability=occluder_probability if path is None else 0.0,
        )
        seed = int(frame_ss.generate_state(1)[0])
        return Plan(clip_name, times, rig, scene, J, path, seed)

    def _sample_rig(self, rng, J, raw, floor_z, distance) -> StereoRig:
        from .cameras import RigRanges

        return sample_rig(
            rng,
            J,
            self.width,
            self.height,
            raw=raw,
            floor_z=floor_z,
            ranges=RigRanges(distance=distance),
        )

    # ---------------------------------------------------------------------------- rendering

    def frames(self, plan: Plan) -> Iterator[Frame]:
        """Render every frame of ``plan`` (backgrounds are reused while the rig is static)."""
        backgrounds = None
        self._set_colors(plan.scene.body_colors)
        for f in range(plan.num_frames):
            rig = plan.rig_at(f)
            if backgrounds is None or plan.camera_path is not None:
                backgrounds = [self._background(v, plan.scene) for v in rig.views]
            yield self._render_frame(plan, f, rig, backgrounds)

    def render_frame(self, plan: Plan, frame: int) -> Frame:
        """Render one frame of ``plan`` (recomputes the background; use :meth:`frames` for many)."""
        self._set_colors(plan.scene.body_colors)
        rig = plan.rig_at(frame)
        return self._render_frame(
            plan, frame, rig, [self._background(v, plan.scene) for v in rig.views]
        )

    def _set_colors(self, colors: np.ndarray) -> None:
        for link, c in enumerate(colors):
            self.p.changeVisualShape(
                self.humanoid.body,
                link,
                rgbaColor=[*map(float, c), 1.0],
                physicsClientId=self.client,
            )

    @staticmethod
    def _background(view: CameraView, scene: SceneSpec) -> tuple[Background, np.ndarray]:
        bg = render_background(view, scene)
        return bg, (np.clip(bg.rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    def _render_frame(self, plan: Plan, f: int, rig: StereoRig, backgrounds) -> Frame:
        scene = plan.scene
        X = plan.joints_world[f]
        rng = np.random.default_rng([plan.seed, f])
        self.humanoid.pose_joints(load_clip(plan.clip).pose(float(plan.times[f])))
        images, masks, j2d, vis, boxes = [], [], [], [], []
        for v, view in enumerate(rig.views):
            bg, bg_u8 = backgrounds[v]
            image, mask, uv, visible, box = self._render_view(view, scene, bg, bg_u8, X)
            image = _post_process(image, scene, v, rng, self._noise)
            images.append(image)
            masks.append(mask)
            j2d.append(uv)
            vis.append(visible)
            boxes.append(box)
        T = rig.T_world_to_cam
        labels = dict(rig.calibration())
        labels.update(
            T_world_to_cam=T,
            joints_3d_cam=X @ T[:3, :3].T + T[:3, 3],
            joints_3d_world=X.copy(),
            joints_2d=np.stack(j2d),
            visibility=np.stack(vis),
            box=np.stack(boxes),
            baseline=float(rig.baseline),
            time=float(plan.times[f]),
            rectified=bool(rig.rectified),
            clip=plan.clip,
        )
        return Frame(np.stack(images), np.stack(masks), labels)

    def _render_view(
        self, view: CameraView, scene: SceneSpec, bg: Background, bg_u8: np.ndarray, X: np.ndarray
    ):
        H, W = view.height, view.width
        cam = view.to_camera(X)
        z = cam[:, 2]
        uv = view.project(X)
        # Output region: joints plus the body's extent, in stored-image pixels.
        margin = 4.0 + view.K[0, 0] * BODY_MARGIN_M / z
        x0 = max(math.floor(np.min(uv[:, 0] - margin)), 0)
        y0 = max(math.floor(np.min(uv[:, 1] - margin)), 0)
        x1 = min(math.ceil(np.max(uv[:, 0] + margin)) + 1, W)
        y1 = min(math.ceil(np.max(uv[:, 1] + margin)) + 1, H)
        if view.distorted:
            pin = _pinhole_pixels(view)[y0:y1, x0:x1]
            wu0 = math.floor(np.nanmin(pin[..., 0])) - 2
            wv0 = math.floor(np.nanmin(pin[..., 1])) - 2
            window = (
                wu0,
                wv0,
                math.ceil(np.nanmax(pin[..., 0])) + 3 - wu0,
                math.ceil(np.nanmax(pin[..., 1])) + 3 - wv0,
            )
        else:
            window = (x0, y0, x1 - x0, y1 - y0)
        premult, alpha, depth = self._render_window(view, window, scene)
        if view.distorted:
            mx = np.ascontiguousarray(pin[..., 0] - window[0])
            my = np.ascontiguousarray(pin[..., 1] - window[1])
            premult = cv2.remap(premult, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            alpha = cv2.remap(alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            depth = cv2.remap(
                depth,
                mx,
                my,
                cv2.INTER_NEAREST,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=float("inf"),
            )

        image = bg_u8.copy()
        region_bg = bg.rgb[y0:y1, x0:x1]
        # Floor shadow (may reach beyond the person's region).
        shadow_box = _shadow(view, scene, bg, X, image)
        if shadow_box is not None:
            sx0, sy0, sx1, sy1 = shadow_box
            region_bg = region_bg.copy()
            ox0, oy0 = max(sx0, x0), max(sy0, y0)
            ox1, oy1 = min(sx1, x1), min(sy1, y1)
            if ox0 < ox1 and oy0 < oy1:
                region_bg[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0] = (
                    image[oy0:oy1, ox0:ox1].astype(np.float32) / 255.0
                )
        in_front = depth < bg.depth[y0:y1, x0:x1]
        a = (alpha * in_front)[..., None]
        comp = region_bg * (1.0 - a) + premult * in_front[..., None]
        image[y0:y1, x0:x1] = (np.clip(comp, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

        mask = np.zeros((H, W), bool)
        mask[y0:y1, x0:x1] = alpha > 0.5
        # Person box: the silhouette and the joints (a joint may sit on the silhouette's edge).
        rows, cols = np.nonzero(mask[y0:y1, x0:x1])
        box = np.array([uv[:, 0].min(), uv[:, 1].min(), uv[:, 0].max(), uv[:, 1].max()])
        if len(rows):
            box[0] = min(box[0], cols.min() + x0 - 0.5)
            box[1] = min(box[1], rows.min() + y0 - 0.5)
            box[2] = max(box[2], cols.max() + x0 + 0.5)
            box[3] = max(box[3], rows.max() + y0 + 0.5)

        # Visibility: inside the image, not behind scene geometry, not behind other body parts.
        px = np.round(uv).astype(np.int64)
        inside = (px[:, 0] >= 0) & (px[:, 0] < W) & (px[:, 1] >= 0) & (px[:, 1] < H) & (z > 0)
        visible = inside.copy()
        for j in np.nonzero(inside)[0]:
            u, v = px[j]
            if bg.depth[v, u] < z[j] - SCENE_OCCLUSION_TOL or (
                x0 <= u < x1 and y0 <= v < y1 and depth[v - y0, u - x0] < z[j] - SELF_OCCLUSION_TOL
            ):
                visible[j] = False
        return image, mask, uv, visible, box

    def _render_window(self, view: CameraView, window, scene: SceneSpec):
        """Premultiplied colour ``(h, w, 3)``, coverage ``(h, w)`` and nearest depth ``(h, w)``
        (inf where empty) of the humanoid in ``window`` of the pinhole image, float32."""
        _u0, _v0, w, h = window
        # Supersample small people fully; cap the rendered pixels for large ones (their edges
        # are a small fraction of their area, and TinyRenderer's cost grows with pixels).
        s = self.supersample
        while s > 1 and w * h * s * s > MAX_RENDER_PIXELS:
            s -= 1
        gl_view, gl_proj = gl_matrices(view, window, s)
        out = self.p.getCameraImage(
            w * s,
            h * s,
            gl_view,
            gl_proj,
            lightDirection=scene.light_dir.tolist(),
            lightColor=np.clip(scene.light_color, 0, 1).tolist(),
            lightDistance=10.0,
            shadow=0,
            lightAmbientCoeff=scene.ambient,
            lightDiffuseCoeff=scene.diffuse,
            lightSpecularCoeff=scene.specular,
            renderer=self.p.ER_TINY_RENDERER,
            physicsClientId=self.client,
        )
        rgba = np.asarray(out[2], dtype=np.uint8).reshape(h * s, w * s, 4)
        zbuf = np.asarray(out[3], dtype=np.float32).reshape(h * s, w * s)
        seg = np.asarray(out[4]).reshape(h * s, w * s)
        person = seg == self.humanoid.body
        rgb = rgba[..., :3].astype(np.float32) * (person[..., None] * np.float32(1.0 / 255.0))
        zeye = FAR * NEAR / (FAR - (FAR - NEAR) * zbuf)
        zeye = np.where(person, zeye, np.inf).astype(np.float32)
        if s > 1:  # exact s x s block averages (premultiplied colour, coverage), nearest depth
            premult = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(person.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
            depth = zeye[0::s, 0::s].copy()
            for i in range(s):
                for j in range(s):
                    if i or j:
                        np.minimum(depth, zeye[i::s, j::s], out=depth)
        else:
            premult, alpha, depth = rgb, person.astype(np.float32), zeye
        return premult.astype(np.float32), alpha, depth


def _pinhole_pixels(view: CameraView) -> np.ndarray:
    cached = getattr(view, "_pinhole_cache", None)
    if cached is None:
        cached = view.pinhole_pixels()
        object.__setattr__(view, "_pinhole_cache", cached)
    return cached


def _follow_path(J: np.ndarray, times: np.ndarray, sigma_s: float = 1.0) -> np.ndarray:
    """Smoothed horizontal path ``(F, 3)`` of the pelvis, centred on its mean (a dolly camera)."""
    pelvis = J[:, _J["pelvis"], :2]
    dt = np.median(np.diff(times)) if len(times) > 1 else 1.0
    sigma = max(sigma_s / max(dt, 1e-6), 1e-3)
    k = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    w = np.exp(-0.5 * (k / sigma) ** 2)
    w /= w.sum()
    padded = np.pad(pelvis, ((len(k) // 2, len(k) // 2), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, i], w, mode="valid") for i in range(2)], axis=1)
    path = np.zeros((len(J), 3))
    path[:, :2] = smooth - smooth.mean(0)
    return path


def _shadow(view: CameraView, scene: SceneSpec, bg: Background, X: np.ndarray, image: np.ndarray):
    """Darken the floor under the person in ``image`` (uint8, in place) along the light;
    returns the touched pixel box ``(x0, y0, x1, y1)`` or None."""
    if scene.shadow <= 0 or scene.light_dir[2] < 0.05:
        return None
    L = scene.light_dir
    heights = X[:, 2] - scene.floor_z
    S = X[:, :2] - (heights / L[2])[:, None] * L[None, :2]  # joints cast onto the floor
    lo, hi = S.min(0) - 0.3, S.max(0) + 0.3
    corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [hi[0], hi[1]], [lo[0], hi[1]]])
    corners3 = np.concatenate([corners, np.full((4, 1), scene.floor_z)], axis=1)
    H, W = view.height, view.width
    if np.all(view.to_camera(corners3)[:, 2] > 0.05):
        uv = view.project(corners3)
        x0 = max(int(np.floor(uv[:, 0].min())) - 8, 0)
        y0 = max(int(np.floor(uv[:, 1].min())) - 8, 0)
        x1 = min(int(np.ceil(uv[:, 0].max())) + 9, W)
        y1 = min(int(np.ceil(uv[:, 1].max())) + 9, H)
    else:
        x0, y0, x1, y1 = 0, 0, W, H
    if x0 >= x1 or y0 >= y1:
        return None
    xy = bg.floor_xy[y0:y1, x0:x1]
    valid = np.isfinite(xy[..., 0])
    if not np.any(valid):
        return None
    # Rasterise the shadow (bones as thick segments) into a small floor map, blur its edge, and
    # look it up at every floor pixel's world xy.
    res = 0.02  # m per shadow-map texel
    size = np.ceil((hi - lo) / res).astype(int) + 1
    if np.any(size > 2000):
        return None
    smap = np.zeros((size[1], size[0]), np.float32)
    for a, b, radius in SHADOW_BONES:
        pa = tuple(round(v) for v in (S[a] - lo) / res * 16)
        pb = tuple(round(v) for v in (S[b] - lo) / res * 16)
        cv2.line(smap, pa, pb, 1.0, max(round(2 * radius / res), 1), cv2.LINE_AA, shift=4)
    smap = cv2.GaussianBlur(smap, (0, 0), 0.03 / res)
    mx = np.where(valid, (xy[..., 0] - lo[0]) / res, -10.0).astype(np.float32)
    my = np.where(valid, (xy[..., 1] - lo[1]) / res, -10.0).astype(np.float32)
    dark = cv2.remap(
        smap, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0.0
    )
    if not np.any(dark > 0.01):
        return None
    factor = (1.0 - scene.shadow * np.clip(dark, 0.0, 1.0))[..., None]
    region = image[y0:y1, x0:x1]
    image[y0:y1, x0:x1] = (region.astype(np.float32) * factor + 0.5).astype(np.uint8)
    return x0, y0, x1, y1


def _post_process(
    image: np.ndarray, scene: SceneSpec, view: int, rng: np.random.Generator, noise_bank: np.ndarray
) -> np.ndarray:
    """Camera response per view (gain, gamma), optional blur, sensor noise; uint8 -> uint8."""
    post = scene.post
    x = np.arange(256, dtype=np.float32) / 255.0
    lut = np.stack([np.clip(x * g, 0, 1) ** post.gamma[view] for g in post.gains[view]], axis=-1)
    lut = (lut * 255.0 + 0.5).astype(np.uint8).reshape(256, 1, 3)
    out = cv2.LUT(image, lut)
    if post.blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), post.blur)
    H, W = out.shape[:2]
    dy, dx = (int(v) for v in rng.integers(0, NOISE_PAD, 2))
    noise = noise_bank[dy : dy + H, dx : dx + W] * post.noise
    return cv2.add(out, noise.astype(np.int16), dtype=cv2.CV_8U)
