"""The stick-figure renderer behind the synthetic dataset: poses, one motion per class, drawing.

:func:`render_frames` turns a :class:`VideoPlan` (every random choice about one video, drawn by
:func:`nightact.sources.synthetic.plan_video`) into dark, noisy RGB frames. Poses are side views of
a stick figure in body heights; each class's motion is a function of the clip's normalised time
``u`` in [0, 1] that returns a :class:`Scene` (the pose plus props: capsules, boxes, a torch beam);
drawing lights anti-aliased shapes on a float canvas, over a static background and sensor noise.
Only NumPy is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from nightact.core.names import CLASS_NAMES

__all__ = [
    "Pose",
    "render_frames",
    "Scene",
    "skeleton",
    "VideoPlan",
]

_TAU = 2.0 * math.pi


@dataclass
class VideoPlan:
    """Everything random about one video, drawn once from its own generator."""

    class_index: int
    height: int
    width: int
    fps: float
    frame_count: int
    facing: int  # +1 faces right, -1 faces left
    body: float  # figure height in pixels
    centre_x: float  # figure's x in pixels when it does not travel
    ground_y: float  # y of the feet in pixels
    brightness: float  # figure's light above the background, 0-255
    phase: float  # radians, shifts the motion's cycle
    cycles: float  # repetitions of the motion per clip
    extra: dict = field(default_factory=dict)  # class-specific numbers (spans, angles ...)
    background: float = 10.0
    noise_sigma: float = 4.0
    speckle_rate: float = 0.003  # share of pixels lit by a random white speck in each frame
    hot_pixel_rate: float = 0.005  # share of pixels stuck bright for the whole clip
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    lamp: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 0.0)  # x, y, radius, strength


# --- poses -------------------------------------------------------------------------------------

# Body proportions in body heights (feet to top of head = 1): side view, hip at the origin.
_TORSO = 0.32
_NECK_TO_HEAD = 0.1
_HEAD_RADIUS = 0.08
_UPPER_ARM = 0.17
_FOREARM = 0.16
_THIGH = 0.25
_SHIN = 0.26


@dataclass
class Pose:
    """Joint angles in radians. Limb angles are measured from hanging straight down, positive
    towards the figure's front (side view) or outwards (front view); the elbow and knee add to
    the limb's angle."""

    lean: float = 0.0  # torso from vertical, positive forward (or sideways in front view)
    near_arm: tuple[float, float] = (0.1, 0.15)
    far_arm: tuple[float, float] = (-0.1, 0.15)
    near_leg: tuple[float, float] = (0.05, 0.0)
    far_leg: tuple[float, float] = (-0.05, 0.0)
    front: bool = False  # front view: the far limbs are mirrored to the other side


@dataclass
class Scene:
    """One frame of a class's motion: the pose, where the figure is and its props."""

    pose: Pose
    x: float | None = None  # figure's x in pixels (None: the plan's centre)
    lift: float = 0.0  # feet raised above the ground line, in pixels (stairs)
    # Props in body coordinates relative to the hands/hip, (x0, y0, x1, y1, radius, light).
    capsules: list[tuple[float, float, float, float, float, float]] = field(default_factory=list)
    # Filled rectangles in body coordinates, (x0, y0, x1, y1, light).
    boxes: list[tuple[float, float, float, float, float]] = field(default_factory=list)
    # Light beams from a body point: (x, y, angle from forward-horizontal, half angle, length).
    beams: list[tuple[float, float, float, float, float]] = field(default_factory=list)


def _direction(angle: float) -> tuple[float, float]:
    """Unit vector of a limb at ``angle`` from straight down, positive forward (y up)."""
    return math.sin(angle), -math.cos(angle)


def skeleton(pose: Pose) -> dict[str, tuple[float, float]]:
    """Joint positions in body heights (x forward, y up), hip at the origin."""
    sin_lean, cos_lean = math.sin(pose.lean), math.cos(pose.lean)
    neck = (_TORSO * sin_lean, _TORSO * cos_lean)
    joints = {
        "hip": (0.0, 0.0),
        "neck": neck,
        "head": (neck[0] + _NECK_TO_HEAD * sin_lean, neck[1] + _NECK_TO_HEAD * cos_lean),
    }
    for side, (shoulder, elbow), mirror in (
        ("near", pose.near_arm, 1.0),
        ("far", pose.far_arm, -1.0 if pose.front else 1.0),
    ):
        upper = _direction(shoulder)
        lower = _direction(shoulder + elbow)
        shoulder_x = neck[0] + (0.05 * mirror if pose.front else 0.0)
        elbow_point = (shoulder_x + mirror * _UPPER_ARM * upper[0], neck[1] + _UPPER_ARM * upper[1])
        joints[f"{side}_shoulder"] = (shoulder_x, neck[1])
        joints[f"{side}_elbow"] = elbow_point
        joints[f"{side}_hand"] = (
            elbow_point[0] + mirror * _FOREARM * lower[0],
            elbow_point[1] + _FOREARM * lower[1],
        )
    for side, (hip, knee), mirror in (
        ("near", pose.near_leg, 1.0),
        ("far", pose.far_leg, -1.0 if pose.front else 1.0),
    ):
        upper = _direction(hip)
        lower = _direction(hip + knee)
        hip_x = 0.04 * mirror if pose.front else 0.0
        knee_point = (hip_x + mirror * _THIGH * upper[0], _THIGH * upper[1])
        joints[f"{side}_hip"] = (hip_x, 0.0)
        joints[f"{side}_knee"] = knee_point
        joints[f"{side}_foot"] = (
            knee_point[0] + mirror * _SHIN * lower[0],
            knee_point[1] + _SHIN * lower[1],
        )
    return joints


_BONES = (
    ("hip", "neck", 0.055),
    ("near_shoulder", "near_elbow", 0.04),
    ("near_elbow", "near_hand", 0.037),
    ("far_shoulder", "far_elbow", 0.04),
    ("far_elbow", "far_hand", 0.037),
    ("near_hip", "near_knee", 0.045),
    ("near_knee", "near_foot", 0.04),
    ("far_hip", "far_knee", 0.045),
    ("far_knee", "far_foot", 0.04),
)


def _ease(value: float) -> float:
    """Smoothstep on [0, 1]: starts and stops gently."""
    value = min(max(value, 0.0), 1.0)
    return value * value * (3.0 - 2.0 * value)


def _lerp(a: float, b: float, amount: float) -> float:
    return a + (b - a) * amount


def _lerp_pair(a: tuple[float, float], b: tuple[float, float], amount: float):
    return (_lerp(a[0], b[0], amount), _lerp(a[1], b[1], amount))


def _travel(plan: VideoPlan, progress: float) -> float:
    return _lerp(plan.extra["x_start"], plan.extra["x_end"], progress)


def _walking_legs(swing: float, amplitude: float) -> tuple[tuple, tuple]:
    """Leg angles for a stride at ``swing`` in [-1, 1]: the leg behind bends its knee."""
    near = (amplitude * swing, -0.25 - 0.6 * amplitude * max(0.0, -swing))
    far = (-amplitude * swing, -0.25 - 0.6 * amplitude * max(0.0, swing))
    return near, far


def _drink(u: float, plan: VideoPlan) -> Scene:
    # Hand from the hip to the mouth and back, a cup in it.
    lift = 0.5 - 0.5 * math.cos(_TAU * plan.cycles * u + plan.phase)
    pose = Pose(lean=-0.2 * lift, near_arm=(_lerp(0.15, 0.75, lift), _lerp(0.2, 2.45, lift)))
    hand = skeleton(pose)["near_hand"]
    # The bottle tips up towards the mouth as the hand rises.
    tip = _lerp(0.0, 2.2, lift)
    bottle = (hand[0], hand[1], hand[0] + 0.1 * math.sin(tip), hand[1] + 0.1 * math.cos(tip))
    return Scene(pose, capsules=[(*bottle, 0.04, 1.1)])


def _picking(u: float, plan: VideoPlan) -> Scene:
    # Bending down to the ground and up again, an object lying in front of the feet.
    bend = 0.5 - 0.5 * math.cos(_TAU * plan.cycles * u + plan.phase)
    knee = (0.9 * bend, -1.7 * bend)
    pose = Pose(
        lean=1.3 * bend,
        near_arm=(0.1 + 0.3 * bend, 0.05),
        far_arm=(0.05 + 0.2 * bend, 0.05),
        near_leg=(knee[0] + 0.05, knee[1]),
        far_leg=(knee[0] - 0.05, knee[1]),
    )
    thing = (0.32, None, 0.36, None, 0.04, 1.0)  # y filled in on the ground by _draw_scene
    # Bent over, the figure reaches half its height forward: stand it a little further back.
    return Scene(pose, x=plan.centre_x - plan.facing * 0.2 * plan.body, capsules=[thing])


def _push(u: float, plan: VideoPlan) -> Scene:
    # Leaning into a box with both arms forward, walking it slowly along.
    swing = math.sin(_TAU * plan.cycles * u + plan.phase)
    pose = Pose(
        lean=0.55 + 0.05 * swing,
        near_arm=(1.05, 0.25),
        far_arm=(1.0, 0.3),
        near_leg=(0.25 + 0.15 * swing, -0.15),
        far_leg=(-0.45 + 0.1 * swing, -0.05),
    )
    hand_x = max(skeleton(pose)["near_hand"][0], skeleton(pose)["far_hand"][0])
    box = (hand_x, None, hand_x + 0.45, 0.6, 0.6)  # from the ground up, filled by _draw_scene
    return Scene(pose, x=_travel(plan, u), boxes=[box])


def _run(u: float, plan: VideoPlan) -> Scene:
    # Long strides, arms pumping, crossing most of the frame.
    swing = math.sin(_TAU * plan.cycles * u + plan.phase)
    near_leg, far_leg = _walking_legs(swing, 0.8)
    pose = Pose(
        lean=0.3,
        near_arm=(-0.8 * swing, 1.6),
        far_arm=(0.8 * swing, 1.6),
        near_leg=near_leg,
        far_leg=far_leg,
    )
    return Scene(pose, x=_travel(plan, u), lift=0.05 * plan.body * abs(swing))


def _throwing(u: float, plan: VideoPlan) -> Scene:
    # Wind up behind, swing over the top, and a bright projectile flies off ahead.
    progress = (plan.cycles * u + plan.phase / _TAU) % 1.0
    if progress < 0.45:
        amount = _ease(progress / 0.45)
        shoulder, lean, far = -2.4 * amount, -0.2 * amount, 1.2 * amount
    elif progress < 0.6:
        amount = (progress - 0.45) / 0.15
        shoulder, lean, far = -2.4 - 2.2 * amount, _lerp(-0.2, 0.35, amount), 1.2 - amount
    else:
        amount = _ease((progress - 0.6) / 0.4)
        shoulder, lean, far = 1.68 - 1.4 * amount, _lerp(0.35, 0.1, amount), 0.2
    pose = Pose(
        lean=lean,
        near_arm=(shoulder, 0.2),
        far_arm=(far, 0.4),
        near_leg=(0.3, -0.1),
        far_leg=(-0.3, 0.0),
    )
    if progress < 0.5:
        ball = skeleton(pose)["near_hand"]
    else:
        # Released half-way through the swing, from about above the shoulder.
        flight = progress - 0.5
        ball = (0.15 + 2.6 * flight, 0.55 + 1.4 * flight - 3.0 * flight * flight)
    return Scene(pose, capsules=[(ball[0], ball[1], ball[0], ball[1], 0.06, 1.8)])


def _boxing(u: float, plan: VideoPlan) -> Scene:
    # Guard up at the chin, left and right punches in turn.
    swing = math.sin(_TAU * plan.cycles * u + plan.phase)
    guard, punch = (0.9, 1.9), (1.55, 0.05)
    pose = Pose(
        lean=0.15,
        near_arm=_lerp_pair(guard, punch, _ease(swing)),
        far_arm=_lerp_pair(guard, punch, _ease(-swing)),
        near_leg=(0.25, -0.15),
        far_leg=(-0.25, -0.1),
    )
    joints = skeleton(pose)
    gloves = [(*joints[hand], *joints[hand], 0.06, 1.15) for hand in ("near_hand", "far_hand")]
    return Scene(pose, lift=0.02 * plan.body * abs(swing), capsules=gloves)


def _lifting(u: float, plan: VideoPlan) -> Scene:
    # Front view: a bar pressed from the shoulders to overhead and back.
    press = 0.5 - 0.5 * math.cos(_TAU * plan.cycles * u + plan.phase)
    arm = _lerp_pair((0.9, 2.1), (2.75, 0.2), press)
    pose = Pose(near_arm=arm, far_arm=arm, near_leg=(0.12, 0.0), far_leg=(0.12, 0.0), front=True)
    joints = skeleton(pose)
    (left, y_left), (right, y_right) = joints["far_hand"], joints["near_hand"]
    bar_y = 0.5 * (y_left + y_right)
    bar = (left - 0.16, bar_y, right + 0.16, bar_y, 0.02, 1.0)
    plates = [(x, bar_y - 0.08, x, bar_y + 0.08, 0.04, 0.9) for x in (left - 0.13, right + 0.13)]
    return Scene(pose, capsules=[bar, *plates])


def _phone(u: float, plan: VideoPlan) -> Scene:
    # Take the glowing phone from the hip to the ear and keep it there.
    reach = _ease(u / plan.extra["reach"])
    pose = Pose(lean=-0.05 * reach, near_arm=_lerp_pair((0.1, 0.1), (2.0, 2.57), reach))
    hand = skeleton(pose)["near_hand"]
    # The screen is the brightest thing in the frame: a glow and the phone in it.
    glow = (hand[0], hand[1], hand[0], hand[1], 0.07, 0.8)
    phone = (hand[0], hand[1] - 0.03, hand[0], hand[1] + 0.04, 0.035, 2.2)
    return Scene(pose, capsules=[glow, phone])


def _stand(u: float, plan: VideoPlan) -> Scene:
    # Front view, standing still but for a slight sway.
    sway = math.sin(_TAU * plan.cycles * u + plan.phase)
    pose = Pose(
        lean=0.03 * sway,
        near_arm=(0.12, 0.05),
        far_arm=(0.12, 0.05),
        near_leg=(0.06, 0.0),
        far_leg=(0.06, 0.0),
        front=True,
    )
    return Scene(pose, x=plan.centre_x + 0.01 * plan.body * sway)


def _stairs(u: float, plan: VideoPlan) -> Scene:
    # Step by step along a staircase drawn in the background, knees lifting in turn.
    steps = plan.cycles * u
    done = math.floor(steps)
    progress = (done + _ease(steps - done)) / plan.cycles
    lifting = math.sin(math.pi * (steps - done))
    high = (0.9 * lifting, -1.4 * lifting)
    low = (-0.1, -0.05)
    near_leg, far_leg = (high, low) if done % 2 == 0 else (low, high)
    pose = Pose(
        lean=0.1 * plan.extra["climb"],
        near_arm=(0.25 * lifting, 0.3),
        far_arm=(-0.25 * lifting, 0.3),
        near_leg=near_leg,
        far_leg=far_leg,
    )
    rise = plan.extra["rise"] * plan.height
    lift = rise * (progress if plan.extra["climb"] > 0 else 1.0 - progress)
    return Scene(pose, x=_travel(plan, progress), lift=lift)


def _flashlight(u: float, plan: VideoPlan) -> Scene:
    # Walking slowly with a torch held forward; its beam lights a cone ahead and below.
    swing = math.sin(_TAU * plan.cycles * u + plan.phase)
    near_leg, far_leg = _walking_legs(swing, 0.35)
    pose = Pose(
        near_arm=(1.15, 0.25),
        far_arm=(-0.25 * swing, 0.2),
        near_leg=near_leg,
        far_leg=far_leg,
    )
    hand = skeleton(pose)["near_hand"]
    torch = (hand[0] - 0.02, hand[1], hand[0] + 0.05, hand[1], 0.025, 1.5)
    angle = -plan.extra["beam_down"] + 0.12 * math.sin(_TAU * 0.7 * u + plan.phase)
    beam = (hand[0] + 0.05, hand[1], angle, plan.extra["beam_width"], plan.extra["beam_length"])
    return Scene(pose, x=_travel(plan, u), capsules=[torch], beams=[beam])


def _waving(u: float, plan: VideoPlan) -> Scene:
    # Front view, one arm raised, the forearm swinging side to side.
    swing = math.sin(_TAU * plan.cycles * u + plan.phase)
    pose = Pose(
        near_arm=(2.45, 0.15 + 0.55 * swing),
        far_arm=(0.12, 0.05),
        near_leg=(0.06, 0.0),
        far_leg=(0.06, 0.0),
        front=True,
    )
    hand = skeleton(pose)["near_hand"]
    return Scene(pose, capsules=[(*hand, *hand, 0.05, 1.1)])  # the open hand


_MOTIONS: dict[str, Callable[[float, VideoPlan], Scene]] = {
    "Drink": _drink,
    "Picking": _picking,
    "Push": _push,
    "Run": _run,
    "Throwing objects": _throwing,
    "boxing": _boxing,
    "lifting weights": _lifting,
    "receiving the phone": _phone,
    "stand": _stand,
    "walking on stairs": _stairs,
    "walking with flashlight": _flashlight,
    "waving": _waving,
}


# --- drawing -----------------------------------------------------------------------------------


def _draw_capsule(canvas: np.ndarray, x0, y0, x1, y1, radius: float, light: float) -> None:
    """Light a thick line with round ends (anti-aliased over one pixel), keeping the brighter."""
    height, width = canvas.shape
    reach = radius + 1.0
    left = max(int(math.floor(min(x0, x1) - reach)), 0)
    right = min(int(math.ceil(max(x0, x1) + reach)) + 1, width)
    top = max(int(math.floor(min(y0, y1) - reach)), 0)
    bottom = min(int(math.ceil(max(y0, y1) + reach)) + 1, height)
    if left >= right or top >= bottom:
        return
    xs = np.arange(left - x0, right - x0, dtype=np.float32)[None, :]
    ys = np.arange(top - y0, bottom - y0, dtype=np.float32)[:, None]
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    if length2 > 1e-9:
        # Distance to the nearest point of the segment. Small arrays: plain ufuncs with `out`
        # instead of np.clip, whose Python overhead would dominate.
        along = xs * (dx / length2) + ys * (dy / length2)
        np.minimum(np.maximum(along, 0.0, out=along), 1.0, out=along)
        xs = xs - along * dx
        ys = ys - along * dy
    cover = np.sqrt(xs * xs + ys * ys)
    np.subtract(radius + 0.5, cover, out=cover)
    np.minimum(np.maximum(cover, 0.0, out=cover), 1.0, out=cover)
    cover *= light
    region = canvas[top:bottom, left:right]
    np.maximum(region, cover, out=region)


def _draw_box(canvas: np.ndarray, x0, y0, x1, y1, light: float) -> None:
    height, width = canvas.shape
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    left, right = max(int(round(left)), 0), min(int(round(right)), width)
    top, bottom = max(int(round(top)), 0), min(int(round(bottom)), height)
    if left < right and top < bottom:
        region = canvas[top:bottom, left:right]
        np.maximum(region, light, out=region)


def _draw_beam(canvas: np.ndarray, x, y, angle, half_angle, length, light: float) -> None:
    """Light a cone from (x, y) along ``angle`` (image coordinates), fading with distance."""
    height, width = canvas.shape
    corners = [(x, y)]
    for offset in (-half_angle, 0.0, half_angle):
        corners.append(
            (x + length * math.cos(angle + offset), y + length * math.sin(angle + offset))
        )
    left = max(int(math.floor(min(c[0] for c in corners))), 0)
    right = min(int(math.ceil(max(c[0] for c in corners))) + 1, width)
    top = max(int(math.floor(min(c[1] for c in corners))), 0)
    bottom = min(int(math.ceil(max(c[1] for c in corners))) + 1, height)
    if left >= right or top >= bottom:
        return
    xs = np.arange(left, right, dtype=np.float32)[None, :] - x
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] - y
    distance = np.sqrt(xs * xs + ys * ys) + 1e-3
    cosine = (xs * math.cos(angle) + ys * math.sin(angle)) / distance
    # Soft edges across the cone's side, brightest on its axis and near the torch.
    inside = np.clip((cosine - math.cos(half_angle)) / (1.0 - math.cos(half_angle)) * 3.0, 0, 1)
    fade = np.clip(1.0 - distance / length, 0.0, 1.0)
    region = canvas[top:bottom, left:right]
    np.maximum(region, light * inside * (0.25 + 0.75 * fade), out=region)


def _draw_scene(canvas: np.ndarray, scene: Scene, plan: VideoPlan) -> None:
    """Draw the figure and its props, placing the lower foot on the ground line."""
    joints = skeleton(scene.pose)
    feet = min(joints["near_foot"][1], joints["far_foot"][1])
    x_pixels = plan.centre_x if scene.x is None else scene.x
    scale, facing = plan.body, plan.facing
    ground = plan.ground_y - scene.lift

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        return x_pixels + facing * scale * x, ground - scale * (y - feet)

    light = plan.brightness
    for start, end, radius in _BONES:
        (x0, y0), (x1, y1) = to_pixels(*joints[start]), to_pixels(*joints[end])
        _draw_capsule(canvas, x0, y0, x1, y1, max(radius * scale, 0.8), light)
    head_x, head_y = to_pixels(*joints["head"])
    _draw_capsule(canvas, head_x, head_y, head_x, head_y, _HEAD_RADIUS * scale, light)
    for x0, y0, x1, y1, radius, gain in scene.capsules:
        # A prop with no height given lies on the ground.
        y0 = feet + radius if y0 is None else y0
        y1 = feet + radius if y1 is None else y1
        (px0, py0), (px1, py1) = to_pixels(x0, y0), to_pixels(x1, y1)
        _draw_capsule(canvas, px0, py0, px1, py1, max(radius * scale, 1.0), min(light * gain, 235))
    for x0, y0, x1, top, gain in scene.boxes:
        y0 = feet if y0 is None else y0
        (px0, py0), (px1, py1) = to_pixels(x0, y0), to_pixels(x1, feet + top)
        _draw_box(canvas, px0, py0, px1, py1, light * gain)
    for x, y, angle, half_angle, length in scene.beams:
        px, py = to_pixels(x, y)
        # Image y points down and a left-facing figure mirrors the beam.
        image_angle = -angle if facing > 0 else math.pi + angle
        _draw_beam(canvas, px, py, image_angle, half_angle, length * scale, min(1.6 * light, 200))


def _draw_stairs(canvas: np.ndarray, plan: VideoPlan) -> None:
    """A dim staircase under the path of the "walking on stairs" figure."""
    steps = max(int(round(plan.cycles)), 1)
    x_start, x_end = plan.extra["x_start"], plan.extra["x_end"]
    tread = (x_end - x_start) / steps
    rise = plan.extra["rise"] * plan.height / steps
    climb = plan.extra["climb"]
    light = 0.75 * plan.brightness
    thickness = max(0.02 * plan.body, 1.0)
    for step in range(steps + 1):
        level = step if climb > 0 else steps - step
        y = plan.ground_y - rise * level
        x0 = x_start + tread * (step - 0.5)
        x1 = x_start + tread * (step + 0.5)
        _draw_capsule(canvas, x0, y, x1, y, thickness, light)
        if step < steps:
            next_y = plan.ground_y - rise * (step + 1 if climb > 0 else steps - step - 1)
            _draw_capsule(canvas, x1, y, x1, next_y, thickness, light)


def _background(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """The static dark scene: a base level, a dim lamp glow, hot pixels and, for the stairs,
    the steps."""
    ys = np.arange(plan.height, dtype=np.float32)[:, None]
    xs = np.arange(plan.width, dtype=np.float32)[None, :]
    lamp_x, lamp_y, lamp_radius, lamp_strength = plan.lamp
    glow = lamp_strength * np.exp(
        -((xs - lamp_x) ** 2 + (ys - lamp_y) ** 2) / (2.0 * lamp_radius**2)
    )
    # A faint ground below the feet line, as a lit floor would look.
    floor = np.where(ys > plan.ground_y, 3.0, 0.0).astype(np.float32)
    background = (plan.background + glow + floor).astype(np.float32)
    # Hot pixels: the sensor's fixed speckles, the same in every frame.
    draw = rng.random(background.shape, dtype=np.float32)
    hot = draw < plan.hot_pixel_rate
    background[hot] += 40.0 + 160.0 * draw[hot] / plan.hot_pixel_rate
    if CLASS_NAMES[plan.class_index] == "walking on stairs":
        stairs = np.zeros_like(background)
        _draw_stairs(stairs, plan)
        background = np.maximum(background, stairs)
    return background


# Planes of noise each video draws once; frames show random windows of them.
_NOISE_PLANES = 4


def _noise_bank(plan: VideoPlan, rng: np.random.Generator) -> np.ndarray:
    """A few planes of sensor noise and white speckles (hot pixels), twice the frame's size.

    Each frame shows a random window of a random plane: drawing fresh noise for every frame
    would cost more than everything else together, and windows at random offsets look just as
    random from frame to frame.
    """
    shape = (_NOISE_PLANES, 2 * plan.height, 2 * plan.width)
    bank = rng.standard_normal(shape, dtype=np.float32)
    bank *= plan.noise_sigma
    # One uniform draw gives both where the speckles are and how bright they are.
    draw = rng.random(shape, dtype=np.float32)
    speckle = draw < plan.speckle_rate
    bank[speckle] += 100.0 + 155.0 * draw[speckle] / plan.speckle_rate
    return bank


def render_frames(plan: VideoPlan, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Yield the video's RGB uint8 frames one at a time (memory does not grow with length)."""
    motion = _MOTIONS[CLASS_NAMES[plan.class_index]]
    background = _background(plan, rng)
    bank = _noise_bank(plan, rng)
    height, width = plan.height, plan.width
    for index in range(plan.frame_count):
        u = index / (plan.frame_count - 1)
        figure = np.zeros((height, width), dtype=np.float32)
        _draw_scene(figure, motion(u, plan), plan)
        plane, top, left = rng.integers(_NOISE_PLANES), rng.integers(height), rng.integers(width)
        # The figure flickers slightly with the camera's gain, as in the real clips.
        figure *= rng.uniform(0.9, 1.1)
        gray = background + bank[plane, top : top + height, left : left + width]
        gray += figure
        np.clip(gray, 0.0, 255.0, out=gray)
        yield np.stack([(gray * channel).astype(np.uint8) for channel in plan.tint], axis=-1)
