"""Random scene appearance and the background ray caster.

The background is a small analytic 3D scene, ray cast per pixel so that both views of a rig
(and the raw, distorted rig) see exactly the same geometry: a textured floor, optionally a room
(four textured walls, ceiling or open top), textured boxes (clutter, and occasional occluders
between the camera and the person) and a distant panorama (sky gradient, skyline). One directional
light shades everything, the humanoid included; the person casts a soft shadow on the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .cameras import CameraView
from .textures import BANK_SIZE, MipTexture, random_color, texture_bank

# pybullet humanoid links (URDF_MAINTAIN_LINK_ORDER): index -> body part.
LINK_PARTS = (
    "pelvis",
    "chest",
    "head",
    "thigh",
    "shin",
    "foot",
    "upper_arm",
    "forearm",
    "hand",
    "thigh",
    "shin",
    "foot",
    "upper_arm",
    "forearm",
    "hand",
)


@dataclass
class Surface:
    """Texture ``texture`` (index) repeated every ``tile`` m, tinted, rotated by ``angle`` rad."""

    texture: int
    tile: float
    tint: np.ndarray
    angle: float = 0.0


@dataclass
class Box:
    """An oriented box standing in the scene: centre (3,), yaw (rad), half extents (3,)."""

    center: np.ndarray
    yaw: float
    half: np.ndarray
    surface: Surface
    occluder: bool = False


@dataclass
class Room:
    """Four walls around ``center (2,)`` rotated by ``yaw``, half sizes ``half (2,)``, height."""

    center: np.ndarray
    yaw: float
    half: np.ndarray
    height: float
    walls: list[Surface]
    ceiling: Surface | None


@dataclass
class Sky:
    zenith: np.ndarray
    horizon: np.ndarray
    skyline_amplitude: float  # rad
    skyline_freqs: np.ndarray
    skyline_phases: np.ndarray
    skyline_weights: np.ndarray
    blocks: np.ndarray  # (n,) step heights (rad) of "buildings" around the azimuth, or empty
    surface: Surface  # texture of the skyline structures (tile = periods around 360 deg)


@dataclass
class PostProcess:
    """Per-view camera response: gains (2, 3), gamma (2,), noise sigma, blur sigma (px)."""

    gains: np.ndarray
    gamma: np.ndarray
    noise: float
    blur: float


@dataclass
class SceneSpec:
    floor_z: float
    floor: Surface
    room: Room | None
    boxes: list[Box]
    sky: Sky
    fog: float  # m, exponential haze distance
    light_dir: np.ndarray  # (3,) unit vector towards the light
    light_color: np.ndarray
    ambient: float
    diffuse: float
    specular: float
    shadow: float  # 0..1 darkening under the person
    body_colors: np.ndarray  # (15, 3) per link
    post: PostProcess
    textures: list[MipTexture] = field(repr=False)


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


def _skin(rng: np.random.Generator) -> np.ndarray:
    base = np.array([0.93, 0.74, 0.62]) * rng.uniform(0.35, 1.0)
    return np.clip(base * rng.uniform(0.92, 1.08, 3), 0, 1)


def sample_body_colors(rng: np.random.Generator) -> np.ndarray:
    """Per-link colours ``(15, 3)``: an outfit (skin, shirt, trousers, shoes) or, one time in
    three, an independent random colour per limb."""
    if rng.random() < 0.35:
        return np.stack([random_color(rng) for _ in LINK_PARTS]).astype(np.float64)
    skin, shirt, trousers, shoes = (
        _skin(rng),
        random_color(rng),
        random_color(rng),
        random_color(rng),
    )
    long_sleeves, long_legs = rng.random() < 0.5, rng.random() < 0.7
    part = {
        "pelvis": trousers,
        "chest": shirt,
        "head": skin,
        "thigh": trousers,
        "shin": trousers if long_legs else skin,
        "foot": shoes,
        "upper_arm": shirt,
        "forearm": shirt if long_sleeves else skin,
        "hand": skin,
    }
    return np.stack([part[name] for name in LINK_PARTS]).astype(np.float64)


def _surface(rng: np.random.Generator, n_textures: int, tile: tuple[float, float]) -> Surface:
    tint = np.clip(rng.uniform(0.75, 1.15, 3), 0, 1.3).astype(np.float32)
    return Surface(
        int(rng.integers(n_textures)),
        float(rng.uniform(*tile)),
        tint,
        float(rng.uniform(0, 2 * math.pi)),
    )


def _sight_lines(camera_xy: np.ndarray, person_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Segments ``(a (n, 2), b (n, 2))`` from cameras to points of the person (subsampled)."""
    cams = camera_xy[np.linspace(0, len(camera_xy) - 1, min(len(camera_xy), 16)).astype(int)]
    lo, hi = person_xy.min(0), person_xy.max(0)
    pts = np.array([lo, hi, [lo[0], hi[1]], [hi[0], lo[1]], 0.5 * (lo + hi)])
    if len(person_xy) > 1:
        pts = np.concatenate([pts, person_xy[np.linspace(0, len(person_xy) - 1, 24).astype(int)]])
    a = np.repeat(cams, len(pts), axis=0)
    b = np.tile(pts, (len(cams), 1))
    return a, b


def _blocks_view(xy: np.ndarray, radius: float, sight: tuple[np.ndarray, np.ndarray]) -> bool:
    """True if a disc at ``xy`` comes within ``radius`` of any camera-to-person segment."""
    a, b = sight
    ab = b - a
    t = np.clip(
        np.einsum("ij,ij->i", xy - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12),
        0.0,
        1.0,
    )
    dist = np.linalg.norm(a + t[:, None] * ab - xy, axis=1)
    return bool(np.any(dist < radius))


def _far_from(xy: np.ndarray, points: np.ndarray, radius: float) -> bool:
    return bool(len(points) == 0 or np.min(np.linalg.norm(points[:, :2] - xy, axis=1)) > radius)


def sample_scene(
    rng: np.random.Generator,
    person_xy: np.ndarray,
    camera_xy: np.ndarray,
    camera_centre: np.ndarray,
    person_centre: np.ndarray,
    floor_z: float = 0.0,
    *,
    allow_room: bool = True,
    occluder_probability: float = 0.3,
) -> SceneSpec:
    """Random appearance for one rig.

    Args:
        person_xy: ``(N, 2)`` horizontal positions the person occupies (joints of all frames).
        camera_xy: ``(M, 2)`` horizontal camera positions (both cameras, all frames).
        camera_centre, person_centre: ``(3,)`` a representative camera and person position, used
            to place occluders between them.
        allow_room: walls may surround the scene (off for follow cameras that travel far).
    """
    ids = rng.choice(BANK_SIZE, size=int(rng.integers(5, 9)), replace=False)
    textures = [texture_bank(int(i)) for i in ids]
    n = len(textures)
    floor = _surface(rng, n, (0.4, 4.0))

    room = None
    if allow_room and rng.random() < 0.5:
        pts = np.concatenate([person_xy, camera_xy])
        yaw = float(rng.uniform(0, 2 * math.pi))
        c, s = math.cos(yaw), math.sin(yaw)
        rot = np.array([[c, s], [-s, c]])  # world -> room
        centre = pts.mean(0) + rng.uniform(-1.5, 1.5, 2)
        local = (pts - centre) @ rot.T
        need = np.abs(local).max(0) + 0.6
        half = need + rng.uniform(0.2, 5.0, 2)
        height = float(rng.uniform(2.4, 5.0))
        walls = [_surface(rng, n, (0.5, 4.0)) for _ in range(4)]
        ceiling = _surface(rng, n, (0.5, 3.0)) if rng.random() < 0.6 else None
        room = Room(centre, yaw, half, height, walls, ceiling)

    occupied = np.concatenate([person_xy, camera_xy])
    sight = _sight_lines(camera_xy, person_xy)
    boxes: list[Box] = []
    n_clutter = int(rng.integers(0, 9))
    for _ in range(40):
        if len(boxes) >= n_clutter:
            break
        half = rng.uniform([0.1, 0.1, 0.1], [1.0, 1.0, 1.2])
        if rng.random() < 0.2:  # pillars
            half[:2] = rng.uniform(0.08, 0.3, 2)
            half[2] = rng.uniform(1.0, 2.5)
        ang = rng.uniform(0, 2 * math.pi)
        dist = rng.uniform(1.0, 12.0)
        xy = person_centre[:2] + dist * np.array([math.cos(ang), math.sin(ang)])
        radius = float(np.linalg.norm(half[:2]))
        if not _far_from(xy, occupied, radius + 0.5) or _blocks_view(xy, radius + 0.4, sight):
            continue
        if room is not None:
            c, s = math.cos(room.yaw), math.sin(room.yaw)
            local = np.array([[c, s], [-s, c]]) @ (xy - room.center)
            if np.any(np.abs(local) + radius > room.half):
                continue
        centre = np.array([xy[0], xy[1], floor_z + half[2]])
        boxes.append(
            Box(centre, float(rng.uniform(0, 2 * math.pi)), half, _surface(rng, n, (0.2, 1.5)))
        )

    if rng.random() < occluder_probability:
        for _ in range(20):
            a = rng.uniform(0.25, 0.75)
            xy = camera_centre[:2] + a * (person_centre[:2] - camera_centre[:2])
            side = np.array(
                [-(person_centre[1] - camera_centre[1]), person_centre[0] - camera_centre[0]]
            )
            side /= max(np.linalg.norm(side), 1e-9)
            xy = xy + side * rng.uniform(-0.5, 0.5)
            half = np.array([rng.uniform(0.1, 0.35), rng.uniform(0.1, 0.35), rng.uniform(0.2, 0.6)])
            radius = float(np.linalg.norm(half[:2]))
            if _far_from(xy, occupied, radius + 0.3):
                centre = np.array([xy[0], xy[1], floor_z + half[2]])
                boxes.append(
                    Box(
                        centre,
                        float(rng.uniform(0, 2 * math.pi)),
                        half,
                        _surface(rng, n, (0.2, 1.5)),
                        occluder=True,
                    )
                )
                break

    horizon = np.clip(random_color(rng, saturation=rng.uniform(0.0, 0.4)) * 0.5 + 0.45, 0, 1)
    zenith = np.clip(random_color(rng, saturation=rng.uniform(0.1, 0.7)), 0, 1)
    k = int(rng.integers(2, 6))
    sky = Sky(
        zenith=zenith.astype(np.float32),
        horizon=horizon.astype(np.float32),
        skyline_amplitude=float(rng.uniform(0.0, 0.25)),
        skyline_freqs=rng.integers(1, 12, k).astype(np.float64),
        skyline_phases=rng.uniform(0, 2 * math.pi, k),
        skyline_weights=rng.uniform(0.2, 1.0, k),
        blocks=(
            rng.uniform(0.02, 0.3, int(rng.integers(8, 60))) if rng.random() < 0.5 else np.zeros(0)
        ),
        surface=_surface(rng, n, (4.0, 24.0)),
    )

    elevation = rng.uniform(math.radians(15), math.radians(80))
    azimuth = rng.uniform(0, 2 * math.pi)
    light_dir = np.array(
        [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
    )
    warm = rng.uniform(-0.15, 0.15)
    light_color = np.clip(np.array([1.0 + warm, 1.0, 1.0 - warm]), 0.7, 1.2)
    ambient = float(rng.uniform(0.35, 0.7))
    diffuse = float(rng.uniform(0.3, 0.75))

    base_gain = rng.uniform(0.8, 1.2) * rng.uniform(0.93, 1.07, 3)
    gains = np.stack([base_gain * rng.uniform(0.97, 1.03, 3) for _ in range(2)])
    post = PostProcess(
        gains=gains.astype(np.float32),
        gamma=(rng.uniform(0.85, 1.15) * rng.uniform(0.98, 1.02, 2)).astype(np.float32),
        noise=float(rng.uniform(0.5, 4.0)),
        blur=float(rng.uniform(0.3, 0.9)) if rng.random() < 0.35 else 0.0,
    )
    return SceneSpec(
        floor_z=floor_z,
        floor=floor,
        room=room,
        boxes=boxes,
        sky=sky,
        fog=float(rng.uniform(25.0, 150.0)),
        light_dir=light_dir,
        light_color=light_color,
        ambient=ambient,
        diffuse=diffuse,
        specular=float(rng.uniform(0.0, 0.4)),
        shadow=float(rng.uniform(0.25, 0.6)) * diffuse / (ambient + diffuse),
        body_colors=sample_body_colors(rng),
        post=post,
        textures=textures,
    )


# --------------------------------------------------------------------------------------------
# Ray casting
# --------------------------------------------------------------------------------------------


@dataclass
class Background:
    """A rendered background of one view.

    ``rgb (H, W, 3)`` float32 linear colour in [0, 1]; ``depth (H, W)`` float32 z-depth (m) of
    the geometry that can hide the person (walls, boxes; ``inf`` for floor and sky, which never
    occlude it); ``floor_xy (H, W, 2)`` float32 world xy of floor pixels (nan elsewhere).
    """

    rgb: np.ndarray
    depth: np.ndarray
    floor_xy: np.ndarray


_SKY, _FLOOR, _CEILING = 0, 1, 2  # surface ids; walls 3..6, boxes 7..


def _mul(a: np.ndarray, M: np.ndarray) -> np.ndarray:
    """``a (n, k) @ M (k, m)`` without BLAS (whose threads would fight the worker processes)."""
    M = M.astype(a.dtype)
    out = a[:, :1] * M[0]
    for i in range(1, M.shape[0]):
        out += a[:, i : i + 1] * M[i]
    return out


_RAY_CACHE: dict = {}


def _rays(view: CameraView) -> tuple[np.ndarray, np.ndarray]:
    """World ray directions ``(N, 3)`` (scaled so the ray parameter is the z-depth) and their
    squared lengths ``(N,)`` of every pixel; cached: both views of a rectified rig share them."""
    grid = view.normalized_grid()
    key = (id(grid), view.R_cw.tobytes())
    if key not in _RAY_CACHE:
        _RAY_CACHE.clear()
        g = grid.reshape(-1, 2)
        d_cam = np.concatenate([g, np.ones((len(g), 1), np.float32)], axis=1)
        d = _mul(d_cam, view.R_cw.astype(np.float32))
        norm2 = np.einsum("ij,ij->i", d_cam, d_cam)
        _RAY_CACHE[key] = (grid, d, norm2)  # holds grid so its id stays unique
    return _RAY_CACHE[key][1], _RAY_CACHE[key][2]


def render_background(view: CameraView, scene: SceneSpec) -> Background:
    """Ray cast ``scene`` for every pixel of ``view`` (exact for the distorted raw cameras too)."""
    H, W = view.height, view.width
    d, norm2 = _rays(view)  # world directions, scaled: t == z-depth
    o = view.C.astype(np.float32)
    inv_f = 1.0 / float(view.K[0, 0])
    npx = len(d)

    t = np.full(npx, np.inf, np.float32)
    sid = np.zeros(npx, np.int16)
    dz = d[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tf = np.where(dz < -1e-6, (scene.floor_z - o[2]) / dz, np.inf).astype(np.float32)
    t = np.where(tf > 0, tf, t)
    sid[np.isfinite(t)] = _FLOOR

    room = scene.room
    if room is not None:
        c, s = math.cos(room.yaw), math.sin(room.yaw)
        rot = np.array([[c, s], [-s, c]], np.float32)
        dl = _mul(d[:, :2], rot.T)
        ol = rot @ (o[:2] - room.center.astype(np.float32))
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in range(2):
                h = room.half[axis]
                ta = np.where(
                    dl[:, axis] > 0, (h - ol[axis]) / dl[:, axis], (-h - ol[axis]) / dl[:, axis]
                )
                ta = np.where(np.abs(dl[:, axis]) > 1e-9, ta, np.inf).astype(np.float32)
                wall = 3 + 2 * axis + (dl[:, axis] > 0).astype(np.int16)
                closer = ta < t
                t = np.where(closer, ta, t)
                sid = np.where(closer, wall, sid)
            tc = np.where(dz > 1e-6, (scene.floor_z + room.height - o[2]) / dz, np.inf)
        closer = tc < t
        t = np.where(closer, tc, t).astype(np.float32)
        sid = np.where(closer, _CEILING, sid)
        if room.ceiling is None:
            sid[sid == _CEILING] = _SKY
            t[sid == _SKY] = np.inf

    box_face = np.zeros(npx, np.int8)
    for b, box in enumerate(scene.boxes):
        sel = _box_pixels(view, box)
        if sel is not None and not len(sel):
            continue
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], np.float32)  # world -> box
        db = _mul(d if sel is None else d[sel], rot.T)
        db = np.where(np.abs(db) < 1e-9, np.float32(1e-9), db)
        ob = rot @ (o - box.center.astype(np.float32))
        half = box.half.astype(np.float32)
        t1 = (-half - ob) / db
        t2 = (half - ob) / db
        tmin = np.minimum(t1, t2)
        tnear = tmin.max(axis=1)
        tfar = np.maximum(t1, t2).min(axis=1)
        t_sel = t if sel is None else t[sel]
        hit = (tnear <= tfar) & (tnear > 0) & (tnear < t_sel)
        if not np.any(hit):
            continue
        idx = np.nonzero(hit)[0] if sel is None else sel[hit]
        t[idx] = tnear[hit]
        sid[idx] = 7 + b
        box_face[idx] = np.argmax(tmin[hit], axis=1)  # axis of the entry face

    rgb = np.empty((npx, 3), np.float32)
    depth = np.full(npx, np.inf, np.float32)
    floor_xy = np.full((npx, 2), np.nan, np.float32)
    L = scene.light_dir.astype(np.float32)
    light = scene.light_color.astype(np.float32)

    def shade(
        idx: np.ndarray, normal: np.ndarray, tex_uv: tuple[np.ndarray, np.ndarray], surface: Surface
    ) -> np.ndarray:
        """Colour of pixels ``idx`` on a surface with world ``normal`` ((3,) or (n, 3))."""
        tex = scene.textures[surface.texture]
        di = d[idx]
        length = np.sqrt(norm2[idx])
        dist = t[idx] * length  # m along the ray
        if normal.ndim == 1:
            ndot = np.einsum("ij,j->i", di, normal)
            lambert = np.float32(max(float(normal @ L), 0.0))
        else:
            ndot = np.einsum("ij,ij->i", normal, di)
            lambert = np.maximum(np.einsum("ij,j->i", normal, L), 0.0)[:, None]
        cos_in = np.abs(ndot) / length
        texels = dist * (inv_f * tex.size / surface.tile) / np.maximum(cos_in, 0.02)
        u, v = tex_uv
        col = tex.sample(u / surface.tile, v / surface.tile, texels)
        col *= surface.tint * light
        col *= scene.ambient + scene.diffuse * lambert
        haze = (1.0 - np.exp(-dist / scene.fog))[:, None]
        return col * (1.0 - haze) + scene.sky.horizon * haze

    idx = np.nonzero(sid == _FLOOR)[0]
    if len(idx):
        p = o + t[idx, None] * d[idx]
        floor_xy[idx] = p[:, :2]
        ca, sa = math.cos(scene.floor.angle), math.sin(scene.floor.angle)
        u = ca * p[:, 0] + sa * p[:, 1]
        v = -sa * p[:, 0] + ca * p[:, 1]
        normal = np.array([0, 0, 1], np.float32)
        rgb[idx] = shade(idx, normal, (u, v), scene.floor)

    if room is not None:
        c, s = math.cos(room.yaw), math.sin(room.yaw)
        ex, ey = np.array([c, s, 0], np.float32), np.array([-s, c, 0], np.float32)
        for wall_id in range(4):
            idx = np.nonzero(sid == 3 + wall_id)[0]
            if not len(idx):
                continue
            p = o + t[idx, None] * d[idx]
            axis, positive = wall_id // 2, wall_id % 2
            n_axis = ex if axis == 0 else ey
            normal = -n_axis if positive else n_axis
            along = np.einsum("ij,j->i", p, ey if axis == 0 else ex)
            rgb[idx] = shade(idx, normal, (along, p[:, 2]), room.walls[wall_id])
            depth[idx] = t[idx]
        idx = np.nonzero(sid == _CEILING)[0]
        if len(idx) and room.ceiling is not None:
            p = o + t[idx, None] * d[idx]
            normal = np.array([0, 0, -1], np.float32)
            rgb[idx] = shade(idx, normal, (p[:, 0], p[:, 1]), room.ceiling)
            depth[idx] = t[idx]

    for b, box in enumerate(scene.boxes):
        idx = np.nonzero(sid == 7 + b)[0]
        if not len(idx):
            continue
        c, s = math.cos(box.yaw), math.sin(box.yaw)
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]], np.float32)
        p = o + t[idx, None] * d[idx]
        local = _mul(p - box.center.astype(np.float32), rot.T)
        face = box_face[idx]
        sign = np.sign(local[np.arange(len(idx)), face])
        normal_local = np.zeros((len(idx), 3), np.float32)
        normal_local[np.arange(len(idx)), face] = sign
        normal = _mul(normal_local, rot)  # box -> world
        ua = np.where(face == 0, local[:, 1], local[:, 0])
        va = np.where(face == 2, local[:, 1], local[:, 2])
        rgb[idx] = shade(idx, normal, (ua, va), box.surface)
        depth[idx] = t[idx]

    idx = np.nonzero(sid == _SKY)[0]
    if len(idx):
        rgb[idx] = _sky_colors(scene, d[idx], inv_f, norm2[idx])
    return Background(
        rgb=rgb.reshape(H, W, 3),
        depth=depth.reshape(H, W),
        floor_xy=floor_xy.reshape(H, W, 2),
    )


def _box_pixels(view: CameraView, box: Box) -> np.ndarray | None:
    """Flat indices of the pixels that may see ``box`` (its projected bounding rectangle, edges
    sampled so distortion is covered), an empty array if none, None for all pixels."""
    c, s = math.cos(box.yaw), math.sin(box.yaw)
    R = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # box -> world
    f = np.linspace(-1.0, 1.0, 9)
    pts = []
    for axis in range(3):  # points along the 12 edges
        a, b = [k for k in range(3) if k != axis]
        for sa in (-1.0, 1.0):
            for sb in (-1.0, 1.0):
                p = np.zeros((len(f), 3))
                p[:, axis], p[:, a], p[:, b] = f, sa, sb
                pts.append(p)
    X = (np.concatenate(pts) * box.half) @ R.T + box.center
    z = view.to_camera(X)[:, 2]
    if np.any(z < 0.05):
        return None if np.any(z > 0.05) else np.zeros(0, np.int64)
    uv = view.project(X)
    x0 = max(int(np.floor(uv[:, 0].min())) - 3, 0)
    y0 = max(int(np.floor(uv[:, 1].min())) - 3, 0)
    x1 = min(int(np.ceil(uv[:, 0].max())) + 4, view.width)
    y1 = min(int(np.ceil(uv[:, 1].max())) + 4, view.height)
    if x0 >= x1 or y0 >= y1:
        return np.zeros(0, np.int64)
    rows = np.arange(y0, y1)[:, None] * view.width
    return (rows + np.arange(x0, x1)[None, :]).reshape(-1)


def _sky_colors(scene: SceneSpec, d: np.ndarray, inv_f: float, norm2: np.ndarray) -> np.ndarray:
    sky = scene.sky
    horizontal = np.sqrt(d[:, 0] ** 2 + d[:, 1] ** 2)
    elevation = np.arctan2(d[:, 2], horizontal)
    azimuth = np.arctan2(d[:, 1], d[:, 0])
    w = np.clip(elevation / (math.pi / 2), 0.0, 1.0)[:, None] ** 0.6
    col = sky.horizon * (1 - w) + sky.zenith * w
    # Skyline: smooth hills plus optional blocky "buildings", textured and hazy.
    line = np.zeros_like(azimuth)
    for f, ph, wt in zip(sky.skyline_freqs, sky.skyline_phases, sky.skyline_weights, strict=True):
        line += wt * (0.5 + 0.5 * np.sin(f * azimuth + ph))
    line = sky.skyline_amplitude * line / max(float(sky.skyline_weights.sum()), 1e-6)
    if len(sky.blocks):
        k = ((azimuth + math.pi) / (2 * math.pi) * len(sky.blocks)).astype(np.int64) % len(
            sky.blocks
        )
        line = np.maximum(line, sky.blocks[k])
    below = elevation < line
    if np.any(below):
        tex = scene.textures[sky.surface.texture]
        reps = max(1.0, round(sky.surface.tile))
        u = (azimuth[below] + math.pi) / (2 * math.pi) * reps
        v = elevation[below] / (2 * math.pi) * reps
        texels = inv_f * np.sqrt(norm2[below]) / (2 * math.pi / reps) * tex.size
        far = tex.sample(u, v, texels) * sky.surface.tint * (scene.ambient + 0.5 * scene.diffuse)
        col[below] = 0.55 * far * scene.light_color + 0.45 * sky.horizon
    return col.astype(np.float32)
