"""Simulation code shared by the stages: robosuite tasks, domain gaps, scripted experts (paper Sec. 4).

    env = make_env("NutAssembly", "target_physics", control="osc")   # the expert's controller
    obs = env.reset(seed=3)                                           # deterministic from a seed
    expert = make_expert(env, seed=3)
    while not env.success() and env.t < env.horizon:
        obs = env.step(expert.act(obs))

Control modes: "osc" (robosuite's OSC_POSE, delta end-effector pose + gripper, the expert's), and
"joint" (absolute joint-position targets + gripper, 8-D: the paper's policy action space, App. C).
Every step records `env.joint_target()`: the joint positions the robot reached plus the gripper
command, which is what a joint-space policy is trained to output and what `replay` sends back.

Domains (Sec. 4 "Domain gaps categorization"): `source`, `target_visual`, `target_physics`,
`target_visual_physics`, applied to the compiled MuJoCo model (cheap to switch, deterministic).
"""
import os
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

TASK_NAMES = ("NutAssembly", "MugCleanup", "MugHang")
DOMAIN_NAMES = ("source", "target_visual", "target_physics", "target_visual_physics")
CONTROL_FREQ = 20  # Hz, robosuite default
# Joint-position stiffness (robosuite's controller scales it by the mass matrix, so it is 1/s^2):
# with robosuite's default kp = 50 the joints lag a 20 Hz target stream by ~0.1 rad and recorded
# expert trajectories do not replay; kp = 2500 (natural frequency 50 rad/s, like a real Franka's
# stiff joint impedance) tracks within ~0.01 rad and replays them.
JOINT_KP = 2500


class TaskError(ValueError):
    """Unknown task, domain or control mode."""


# ----------------------------------------------------------------------------------------------
# domain gaps: one documented parameter set per (task, domain)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VisualGap:
    """Colors, lighting and camera pose (robosuite's TextureModder fails with mujoco 3.3.7, so
    material and geom colors are edited directly)."""
    table_rgba: tuple = None        # tint of the table top material
    object_rgba: tuple = None       # tint of the manipulated object
    fixture_rgba: tuple = None      # tint of the fixture (peg, cabinet, hook); None: as object_rgba
    robot_rgba: tuple = None        # color of the robot links' visual geoms
    light_diffuse: float = None     # diffuse intensity of the scene light (robosuite: ~1.0)
    light_dir_shift: tuple = None   # added to the light's direction
    camera_shift: tuple = None      # agentview camera translation (m)


@dataclass(frozen=True)
class PhysicsGap:
    """Object dynamics and layout: the visuals stay close, the right actions differ."""
    object_mass_scale: float = 1.0       # mass (and inertia) of the manipulated object
    object_friction_scale: float = 1.0   # sliding friction of the manipulated object
    fixture_shift: tuple = (0.0, 0.0)    # (dx, dy) of the fixture the object goes to (peg, ...)
    placement_shift: tuple = (0.0, 0.0)  # (dx, dy) of the object's initial placement region
    object_size_scale: float = 1.0       # size of the manipulated object (tasks with MJCF objects)
    fixture_damping_scale: float = 1.0   # damping of the fixture's joint (drawer slide)


@dataclass(frozen=True)
class Domain:
    name: str
    visual: VisualGap = field(default_factory=VisualGap)
    physics: PhysicsGap = field(default_factory=PhysicsGap)


# NutAssembly visual gap: a dark wooden table, a blue-grey nut, dark robot, dimmer light from the
# side and the agentview camera moved by 2-3 cm. Physics gap: the square peg moves 3 cm toward the
# robot's right and 2 cm back (the insertion point changes by 3.6 cm, beyond the nut hole's 6.7 mm
# clearance, so source insertion actions miss), the nut is 2x heavier with 0.45x friction (a grasp
# that holds in the source can slip: the expert lifts and moves slower), and the nut's placement
# region shifts by 2 cm.
_NUT_VISUAL = VisualGap(table_rgba=(0.45, 0.3, 0.18, 1), object_rgba=(0.45, 0.55, 0.85, 1),
                        robot_rgba=(0.25, 0.25, 0.3, 1), light_diffuse=0.55,
                        light_dir_shift=(0.3, -0.3, 0.0), camera_shift=(0.02, -0.03, 0.02))
_NUT_PHYSICS = PhysicsGap(object_mass_scale=2.0, object_friction_scale=0.45,
                          fixture_shift=(0.02, -0.03), placement_shift=(0.0, 0.02))
# MugCleanup visual gap: dark table, a red mug, a grey-blue cabinet, dark robot, dimmer light,
# camera moved. Physics gap: the mug is 10% smaller (grasp height and width change), 2x heavier with
# 0.5x friction, the drawer slides with 4x damping (slower, harder pull), the cabinet sits 3 cm
# further left (+y) and 2 cm back, the mug's region shifts 2 cm.
_MUG_VISUAL = VisualGap(table_rgba=(0.3, 0.3, 0.32, 1), object_rgba=(0.8, 0.2, 0.2, 1),
                        fixture_rgba=(0.45, 0.5, 0.6, 1), robot_rgba=(0.25, 0.25, 0.3, 1),
                        light_diffuse=0.55, light_dir_shift=(0.3, -0.3, 0.0), camera_shift=(0.02, -0.03, 0.02))
_MUG_PHYSICS = PhysicsGap(object_mass_scale=2.0, object_friction_scale=0.5, object_size_scale=0.9,
                          fixture_damping_scale=4.0, fixture_shift=(0.02, 0.03), placement_shift=(0.0, -0.02))
# MugHang: the MugCleanup colors (the tree takes the fixture color); physics: the same mug changes
# (10% smaller, so the handle loop is smaller and sits lower; 2x heavier, 0.5x friction) and the
# tree moves 3 cm back and 2 cm right.
_HANG_PHYSICS = PhysicsGap(object_mass_scale=2.0, object_friction_scale=0.5, object_size_scale=0.9,
                           fixture_shift=(0.03, -0.02), placement_shift=(0.0, -0.02))
DOMAINS = {
    "MugHang": {
        "source": Domain("source"),
        "target_visual": Domain("target_visual", visual=_MUG_VISUAL),
        "target_physics": Domain("target_physics", physics=_HANG_PHYSICS),
        "target_visual_physics": Domain("target_visual_physics", visual=_MUG_VISUAL, physics=_HANG_PHYSICS),
    },
    "MugCleanup": {
        "source": Domain("source"),
        "target_visual": Domain("target_visual", visual=_MUG_VISUAL),
        "target_physics": Domain("target_physics", physics=_MUG_PHYSICS),
        "target_visual_physics": Domain("target_visual_physics", visual=_MUG_VISUAL, physics=_MUG_PHYSICS),
    },
    "NutAssembly": {
        "source": Domain("source"),
        "target_visual": Domain("target_visual", visual=_NUT_VISUAL),
        "target_physics": Domain("target_physics", physics=_NUT_PHYSICS),
        "target_visual_physics": Domain("target_visual_physics", visual=_NUT_VISUAL, physics=_NUT_PHYSICS),
    },
}


def get_domain(task: str, domain: str) -> Domain:
    if task not in DOMAINS:
        raise TaskError(f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
    if domain not in DOMAIN_NAMES:
        raise TaskError(f"unknown domain {domain!r}; choose from {', '.join(DOMAIN_NAMES)}")
    return DOMAINS[task][domain]


# ----------------------------------------------------------------------------------------------
# controllers
# ----------------------------------------------------------------------------------------------
def _quiet_robosuite():
    """robosuite logs a warning per unused controller part (head, legs, ...) at every env build."""
    import logging
    from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER
    ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.ERROR)
    for h in ROBOSUITE_DEFAULT_LOGGER.handlers:
        h.setLevel(logging.ERROR)


def controller_config(control: str, joint_kp: float = JOINT_KP) -> dict:
    """robosuite composite controller config for "osc" (OSC_POSE delta, 7-D) or "joint"
    (JOINT_POSITION absolute, limits widened, stiffness joint_kp, 7 joints + gripper = 8-D)."""
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config
    if control == "osc":
        return load_composite_controller_config(controller="BASIC", robot="Panda")
    if control == "joint":
        part = load_part_controller_config(default_controller="JOINT_POSITION")
        part.update(input_type="absolute", input_max=10, input_min=-10, output_max=10, output_min=-10,
                    kp=joint_kp)
        return refactor_composite_controller_config(part, "Panda", ["right"])
    raise TaskError(f"unknown control mode {control!r}; choose osc or joint")


# ----------------------------------------------------------------------------------------------
# the task environment
# ----------------------------------------------------------------------------------------------
class TaskEnv:
    """A robosuite task in one domain. Subclasses define the scene, placement, success and
    subtask signals; this class applies the domain, seeds resets and records joint targets."""
    robosuite_env = None
    horizon = 400
    settle_steps = 5        # steps an episode runs on after success (it must still hold then)
    object_name = None      # the manipulated object (robosuite object name)
    fixture_body = None     # body the object goes to

    def __init__(self, task, domain="source", control="osc", cameras=(), image_size=84, joint_kp=JOINT_KP):
        import robosuite as suite
        _quiet_robosuite()
        self.task, self.domain, self.control = task, get_domain(task, domain), control
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.env = suite.make(
            self.robosuite_env, robots="Panda", controller_configs=controller_config(control, joint_kp),
            has_renderer=False, has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=bool(self.cameras), camera_names=list(self.cameras) or "agentview",
            camera_heights=image_size, camera_widths=image_size, control_freq=CONTROL_FREQ,
            horizon=10_000, ignore_done=True, hard_reset=False, lite_physics=True,
            initialization_noise=None, **self.scene_kwargs())
        self.sim = self.env.sim
        self._defaults = self._read_defaults()
        self._apply_domain()
        self.t = 0
        self._gripper = -1.0

    def scene_kwargs(self) -> dict:
        """Extra robosuite.make arguments (the objects of a CotrainScene task)."""
        return dict(reward_shaping=False)

    # --- domain ------------------------------------------------------------------------------
    def _object_geoms(self):
        m = self.sim.model
        body = m.body_name2id(f"{self.object_name}_main")
        return [g for g in range(m.ngeom) if m.geom_bodyid[g] == body]

    def _read_defaults(self):
        m = self.sim.model
        body = m.body_name2id(f"{self.object_name}_main")
        return dict(mass=m.body_mass[body].copy(), inertia=m.body_inertia[body].copy(),
                    friction=m.geom_friction.copy(), fixture_pos=m.body_pos[m.body_name2id(self.fixture_body)].copy(),
                    mat_rgba=m.mat_rgba.copy(), geom_rgba=m.geom_rgba.copy(),
                    light_diffuse=m.light_diffuse.copy(), light_dir=m.light_dir.copy(),
                    cam_pos=m.cam_pos.copy())

    def _apply_domain(self):
        """Write the domain's parameters into the compiled model, starting from the defaults."""
        m, d0, v, p = self.sim.model, self._defaults, self.domain.visual, self.domain.physics
        body = m.body_name2id(f"{self.object_name}_main")
        obj_geoms = self._object_geoms()
        # physics
        m.body_mass[body] = d0["mass"] * p.object_mass_scale
        m.body_inertia[body] = d0["inertia"] * p.object_mass_scale
        m.geom_friction[:] = d0["friction"]
        m.geom_friction[obj_geoms, 0] = d0["friction"][obj_geoms, 0] * p.object_friction_scale
        fx = m.body_name2id(self.fixture_body)
        m.body_pos[fx] = d0["fixture_pos"] + np.array([*p.fixture_shift, 0.0])
        # visuals: no shadows or reflections (DESIGN: cheaper renders), then the domain's colors
        m.light_castshadow[:] = 0
        m.mat_reflectance[:] = 0
        m.mat_rgba[:] = d0["mat_rgba"]
        m.geom_rgba[:] = d0["geom_rgba"]
        m.light_diffuse[:] = d0["light_diffuse"]
        m.light_dir[:] = d0["light_dir"]
        m.cam_pos[:] = d0["cam_pos"]
        if v.table_rgba is not None:
            self._tint(self._table_geoms(), v.table_rgba)
        if v.object_rgba is not None:
            self._tint(obj_geoms, v.object_rgba)
        if (v.fixture_rgba or v.object_rgba) is not None:
            self._tint(self._fixture_geoms(), v.fixture_rgba or v.object_rgba)
        if v.robot_rgba is not None:
            self._tint(self._robot_visual_geoms(), v.robot_rgba)
        if v.light_diffuse is not None:
            m.light_diffuse[:] = v.light_diffuse
        if v.light_dir_shift is not None:
            ld = d0["light_dir"] + np.array(v.light_dir_shift)
            m.light_dir[:] = ld / np.linalg.norm(ld, axis=-1, keepdims=True)
        if v.camera_shift is not None:
            m.cam_pos[m.camera_name2id("agentview")] += np.array(v.camera_shift)
        self.sim.forward()

    def _tint(self, geoms, rgba):
        """Color geoms: through their material when they have one, else the geom color."""
        m = self.sim.model
        for g in geoms:
            if m.geom_matid[g] >= 0:
                m.mat_rgba[m.geom_matid[g]] = rgba
            else:
                m.geom_rgba[g] = rgba

    def _table_geoms(self):
        m = self.sim.model
        return [g for g in range(m.ngeom) if (m.geom_id2name(g) or "").startswith("table") and m.geom_group[g] == 1]

    def _fixture_geoms(self):
        """Visual geoms of the fixture body and its children (the drawer inside the cabinet)."""
        m = self.sim.model
        root = m.body_name2id(self.fixture_body)
        bodies = {root} | {b for b in range(m.nbody) if m.body_parentid[b] == root}
        return [g for g in range(m.ngeom) if m.geom_bodyid[g] in bodies and m.geom_group[g] == 1]

    def _robot_visual_geoms(self):
        m = self.sim.model
        out = []
        for g in range(m.ngeom):
            name = m.body_id2name(m.geom_bodyid[g]) or ""
            if name.startswith(("robot0_", "gripper0_", "fixed_mount0_")) and m.geom_group[g] == 1:
                out.append(g)
        return out

    # --- episode -----------------------------------------------------------------------------
    def reset(self, seed: int):
        """Reset to the initial state drawn from `seed` (same seed, same state, any domain)."""
        self.env.reset()
        self.rng = np.random.default_rng(seed)
        self._place_objects(self.rng)
        self.sim.forward()
        self.t = 0
        self._gripper = -1.0
        return self.observe()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        self._gripper = float(action[-1])
        obs, _, _, _ = self.env.step(action)
        self.t += 1
        return self.observe(obs)

    def observe(self, obs=None) -> dict:
        """Low-dim observations (and images when cameras were asked for), plus object poses.
        `obs`: robosuite's observation dict of this step, if at hand (saves a render)."""
        if obs is None:
            obs = self.env._get_observations(force_update=True)
        out = {k: np.asarray(obs[k]) for k in ("robot0_joint_pos", "robot0_gripper_qpos",
                                               "robot0_eef_pos", "robot0_eef_quat")}
        out.update(self.object_poses())
        for cam in self.cameras:
            out[f"{cam}_image"] = np.ascontiguousarray(obs[f"{cam}_image"][::-1])  # right side up
        if len(self.cameras) >= 2 and np.array_equal(out[f"{self.cameras[0]}_image"], out[f"{self.cameras[1]}_image"]):
            raise RuntimeError(f"cameras {self.cameras[0]} and {self.cameras[1]} returned the same frame")
        return out

    def joint_target(self) -> np.ndarray:
        """The policy's action space (App. C): absolute joint positions + gripper command."""
        q = self.sim.data.qpos[self.env.robots[0]._ref_joint_pos_indexes]
        return np.concatenate([q, [self._gripper]])

    def get_state(self) -> np.ndarray:
        return np.asarray(self.sim.get_state().flatten())

    def set_state(self, state):
        self.sim.set_state_from_flattened(np.asarray(state))
        self.sim.forward()

    def grasping(self) -> bool:
        """Both finger pads touch the manipulated object (robosuite's grasp check)."""
        return bool(self.env._check_grasp(self.env.robots[0].gripper, self._grasp_object().contact_geoms))

    def _grasp_object(self):
        return self.env.objects[self.object_name]


class NutAssembly(TaskEnv):
    """robosuite's NutAssemblySquare (MimicGen's "Square"): put the square nut on the square peg.
    Initial state: nut center x in [-0.115, -0.11], y in [0.11, 0.225] (robosuite's ranges, plus
    the domain's placement shift), yaw uniform in [0, 2 pi); robot at its default joint pose.
    Success (robosuite): nut within 3 cm of the peg axis in x and y, below table + 5 cm, gripper
    away. Subtasks (MimicGen Square): 1 grasp the nut (frame: nut; ends when grasped),
    2 insert on the peg (frame: peg; ends at success)."""
    robosuite_env = "NutAssemblySquare"
    horizon = 500
    object_name = "SquareNut"
    fixture_body = "peg1"
    subtasks = (("grasp", "SquareNut"), ("insert", "peg1"))

    def _place_objects(self, rng):
        p = self.domain.physics
        x = rng.uniform(-0.115, -0.11) + p.placement_shift[0]
        y = rng.uniform(0.11, 0.225) + p.placement_shift[1]
        yaw = rng.uniform(0, 2 * np.pi)
        z = self.env.table_offset[2] + 0.02
        quat = np.array([np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)])  # wxyz
        self.sim.data.set_joint_qpos("SquareNut_joint0", np.concatenate([[x, y, z], quat]))

    def object_poses(self) -> dict:
        d, m = self.sim.data, self.sim.model
        nut = m.body_name2id("SquareNut_main")
        return {"nut_pos": d.body_xpos[nut].copy(), "nut_quat": d.body_xquat[nut].copy(),  # wxyz
                "handle_pos": d.site_xpos[m.site_name2id("SquareNut_handle_site")].copy(),
                "peg_pos": d.body_xpos[m.body_name2id("peg1")].copy()}

    def _grasp_object(self):
        return self.env.nuts[self.env.nut_id]

    def success(self) -> bool:
        return bool(self.env._check_success())

    def subtask_signals(self) -> dict:
        return {"grasp": self.grasping(), "insert": self.success()}


# ----------------------------------------------------------------------------------------------
# MJCF objects written here (robosuite has no mug, drawer or hook): boxes and cylinders only, so
# collision geometry is exact and contacts behave
# ----------------------------------------------------------------------------------------------
def _xml_object(name: str, body: str, half_height: float, radius: float) -> str:
    """Write a robosuite-style object XML (body "object" + bottom/top/radius sites) to a cache
    folder and return its path."""
    import hashlib
    import tempfile
    xml = f"""<mujoco model="{name}">
  <asset>
    <material name="{name}_mat" rgba="1 1 1 1" specular="0.2" shininess="0.2"/>
  </asset>
  <worldbody>
    <body>
      <body name="object">
{body}
      </body>
      <site rgba="0 0 0 0" size="0.005" pos="0 0 {-half_height:.4f}" name="bottom_site"/>
      <site rgba="0 0 0 0" size="0.005" pos="0 0 {half_height:.4f}" name="top_site"/>
      <site rgba="0 0 0 0" size="0.005" pos="{radius:.4f} {radius:.4f} 0" name="horizontal_radius_site"/>
    </body>
  </worldbody>
</mujoco>"""
    folder = os.path.join(tempfile.gettempdir(), "cotrain_mjcf")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{name}_{hashlib.sha1(xml.encode()).hexdigest()[:12]}.xml")
    if not os.path.exists(path):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(xml)
        os.replace(tmp, path)
    return path


def _geom(kind, size, pos, rgba, name=None, **extra):
    attrs = " ".join(f'{k}="{v}"' for k, v in extra.items())
    nm = f'name="{name}" ' if name else ""
    return (f'        <geom {nm}type="{kind}" size="{" ".join(f"{x:.4f}" for x in size)}" '
            f'pos="{" ".join(f"{x:.4f}" for x in pos)}" rgba="{" ".join(str(c) for c in rgba)}" '
            f'group="0" condim="4" friction="1 0.005 0.0001" solref="0.01 1" {attrs}/>')


MUG = dict(radius=0.032, half_height=0.035, wall=0.005, segments=16, density=600)


def mug_xml(scale: float = 1.0) -> str:
    """A hollow-cylinder mug (bottom disk + a ring of wall boxes) with a handle loop on +x: two
    arms and an outer bar, leaving an opening of 3.4 cm x 2.2 cm for a hook."""
    r, h, w = MUG["radius"] * scale, MUG["half_height"] * scale, MUG["wall"]
    c = (0.85, 0.85, 0.8, 1)
    parts = [_geom("cylinder", (r, w / 2), (0, 0, -h + w / 2), c, density=MUG["density"])]
    n = MUG["segments"]
    half_chord = r * np.tan(np.pi / n) * 1.05
    for i in range(n):
        a = 2 * np.pi * i / n
        q = (np.cos(a / 2), 0, 0, np.sin(a / 2))
        parts.append(_geom("box", (w / 2, half_chord, h - w / 2), ((r - w / 2) * np.cos(a), (r - w / 2) * np.sin(a), w / 2), c,
                           quat=" ".join(f"{x:.5f}" for x in q), density=MUG["density"]))
    arm, bar = 0.028 * scale, 0.004
    for z in (h * 0.7, -h * 0.5):  # upper and lower arms of the handle
        parts.append(_geom("box", (arm / 2, 0.005, bar), (r + arm / 2 - 0.002, 0, z), c, density=MUG["density"]))
    zc, hz = (h * 0.7 - h * 0.5) / 2, (h * 0.7 + h * 0.5) / 2
    parts.append(_geom("box", (bar, 0.005, hz + bar), (r + arm - 0.002, 0, zc), c, density=MUG["density"]))
    return _xml_object("mug", "\n".join(parts), h, r + arm)


DRAWER = dict(width=0.22, depth=0.26, height=0.12, travel=0.19, wall=0.01)


def drawer_xml(slide_damping: float = 5.0) -> str:
    """A fixed cabinet (open toward -x, the robot) holding a drawer on a slide joint (qpos 0 =
    closed, -travel = open). The drawer's front panel closes the opening from outside; a vertical
    bar handle stands 3.5 cm in front of it, so a hand grasping it stays clear of the cabinet."""
    W, D, H, t, wl = DRAWER["width"] / 2, DRAWER["depth"] / 2, DRAWER["height"] / 2, DRAWER["travel"], DRAWER["wall"] / 2
    c, dc, hc = (0.55, 0.4, 0.3, 1), (0.7, 0.55, 0.4, 1), (0.3, 0.3, 0.3, 1)
    cab = [_geom("box", (D, W, wl), (0, 0, -H + wl), c),            # bottom
           _geom("box", (D, W, wl), (0, 0, H - wl), c),             # top
           _geom("box", (D, wl, H), (0, W - wl, 0), c),             # sides
           _geom("box", (D, wl, H), (0, -W + wl, 0), c),
           _geom("box", (wl, W, H), (D - wl, 0, 0), c)]             # back
    # drawer box in the cabinet's inner space (small gaps so it slides without touching)
    dW, dH = W - 2 * wl - 0.004, H - 2 * wl - 0.004
    dD = D - wl - 0.006                 # half depth: from the front face to the back wall
    xc = -D + dD                        # drawer box center x when closed
    dr = [_geom("box", (dD, dW, wl), (xc, 0, -dH + wl), dc),                  # bottom
          _geom("box", (wl, dW, dH * 0.8), (xc + dD - wl, 0, -dH * 0.2), dc),  # back
          _geom("box", (dD, wl, dH * 0.8), (xc, dW - wl, -dH * 0.2), dc),      # sides
          _geom("box", (dD, wl, dH * 0.8), (xc, -dW + wl, -dH * 0.2), dc),
          _geom("box", (wl, W, dH * 0.8), (-D - wl - 0.001, 0, -dH * 0.2), dc),  # front panel, outside
          _geom("box", (0.0175, 0.005, 0.005), (-D - 2 * wl - 0.0175, 0, 0.025), hc),  # handle posts
          _geom("box", (0.0175, 0.005, 0.005), (-D - 2 * wl - 0.0175, 0, -0.025), hc),
          _geom("box", (0.005, 0.005, 0.032), (-D - 2 * wl - 0.037, 0, 0.0), hc)]    # vertical bar
    body = "\n".join(cab) + f"""
        <body name="drawer" pos="0 0 {wl + 0.002:.4f}">
          <joint name="slide" type="slide" axis="1 0 0" range="{-t:.3f} 0" damping="{slide_damping}" frictionloss="0.3" limited="true"/>
          <site name="handle_site" pos="{-D - 2 * wl - 0.037:.4f} 0 0" size="0.004" rgba="1 0 0 0"/>
          <site name="interior_site" pos="{xc:.4f} 0 {-dH + 2 * wl:.4f}" size="0.004" rgba="0 1 0 0"/>
{chr(10).join(dr)}
        </body>"""
    return _xml_object("drawer", body, H, max(W, D))


HOOK = dict(arm_length=0.10, height=0.24, arm_drop=0.02, arm_tilt=0.12)


def hook_xml() -> str:
    """A mug tree: a heavy base plate, a vertical post and one arm pointing along -y from near
    the top, tilted up toward its tip by `arm_tilt` rad so a hung mug settles toward the post.
    Sites mark the arm's tip and root (a hung handle loop sits between them)."""
    L, H, drop, tilt = HOOK["arm_length"], HOOK["height"], HOOK["arm_drop"], HOOK["arm_tilt"]
    c = (0.35, 0.3, 0.25, 1)
    za = H / 2 - drop
    mid = (0, -L / 2 * np.cos(tilt), za + L / 2 * np.sin(tilt))
    q = (np.cos((np.pi / 2 + tilt) / 2), np.sin((np.pi / 2 + tilt) / 2), 0, 0)  # z axis -> arm direction
    parts = [_geom("box", (0.06, 0.06, 0.006), (0, 0, -H / 2 + 0.006), c),
             _geom("cylinder", (0.009, H / 2), (0, 0, 0.0), c),
             _geom("cylinder", (0.005, L / 2), mid, c, quat=" ".join(f"{x:.5f}" for x in q))]
    tip = (0, -L * np.cos(tilt), za + L * np.sin(tilt))
    body = "\n".join(parts) + f"""
        <site name="tip_site" pos="{tip[0]:.4f} {tip[1]:.4f} {tip[2]:.4f}" size="0.004" rgba="1 0 0 0"/>
        <site name="root_site" pos="0 -0.012 {za:.4f}" size="0.004" rgba="1 0 0 0"/>"""
    return _xml_object("hook", body, H / 2, 0.08)


def _register_scene_env():
    """A robosuite ManipulationEnv with a table, the Panda and the MJCF objects a task names.
    Defined lazily (robosuite registers environment classes when they are created)."""
    import robosuite
    if "CotrainScene" in robosuite.ALL_ENVIRONMENTS:
        return
    from robosuite.environments.manipulation.manipulation_env import ManipulationEnv
    from robosuite.models.arenas import TableArena
    from robosuite.models.objects import MujocoXMLObject
    from robosuite.models.tasks import ManipulationTask

    class CotrainScene(ManipulationEnv):
        def __init__(self, robots, objects=(), table_offset=(0, 0, 0.8), **kw):
            self.object_specs = list(objects)   # (name, xml_path, free_joint, pos)
            self.table_full_size = (0.8, 0.8, 0.05)
            self.table_offset = np.array(table_offset)
            super().__init__(robots=robots, base_types="default", **kw)

        def reward(self, action=None):
            return 0.0

        def _load_model(self):
            super()._load_model()
            xpos = self.robots[0].robot_model.base_xpos_offset["table"](self.table_full_size[0])
            self.robots[0].robot_model.set_base_xpos(xpos)
            arena = TableArena(table_full_size=self.table_full_size, table_offset=self.table_offset)
            arena.set_origin([0, 0, 0])
            self.objects = {}
            for name, path, free, pos in self.object_specs:
                joints = [dict(type="free", damping="0.0005")] if free else None
                obj = MujocoXMLObject(path, name=name, joints=joints, obj_type="all", duplicate_collision_geoms=True)
                if not free:
                    obj.get_obj().set("pos", " ".join(str(x) for x in pos))
                self.objects[name] = obj
            self.model = ManipulationTask(mujoco_arena=arena, mujoco_robots=[r.robot_model for r in self.robots],
                                          mujoco_objects=list(self.objects.values()))

        def _check_success(self):
            return False


class MugCleanup(TaskEnv):
    """MimicGen's MugCleanup: open the drawer, put the mug in, close the drawer.
    Scene: a cabinet (22 x 26 x 12 cm) at x = 0.15, y = 0.2 on the table, opening toward the robot,
    its drawer on a slide (19 cm travel); a mug (6.4 cm wide, 7 cm tall, handle loop) with center
    x in [-0.12, -0.02], y in [-0.22, -0.08], yaw uniform in [0, 2 pi). Success: drawer closed
    (within 1 cm) with the mug inside it. Subtasks (object-centric): 1 open the drawer (frame:
    drawer; ends when open), 2 grasp the mug (frame: mug; ends when grasped), 3 place it in the
    drawer (frame: drawer; ends when released inside), 4 close the drawer (frame: drawer)."""
    robosuite_env = "CotrainScene"
    horizon = 1000
    object_name = "mug"
    fixture_body = "drawer_main"
    subtasks = (("open", "drawer"), ("grasp", "mug"), ("place", "drawer"), ("close", "drawer"))
    cabinet_pos = (0.15, 0.2)

    def scene_kwargs(self):
        _register_scene_env()
        p = self.domain.physics
        z = 0.8 + DRAWER["height"] / 2
        return dict(objects=[("mug", mug_xml(p.object_size_scale), True, None),
                             ("drawer", drawer_xml(5.0 * p.fixture_damping_scale), False, (*self.cabinet_pos, z))])

    def _place_objects(self, rng):
        p = self.domain.physics
        x = rng.uniform(-0.12, -0.02) + p.placement_shift[0]
        y = rng.uniform(-0.22, -0.08) + p.placement_shift[1]
        yaw = rng.uniform(0, 2 * np.pi)
        z = 0.8 + MUG["half_height"] * p.object_size_scale + 0.002
        self.sim.data.set_joint_qpos("mug_joint0", np.array([x, y, z, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))
        self.sim.data.set_joint_qpos("drawer_slide", 0.0)

    def drawer_opening(self) -> float:
        """How far the drawer is pulled out (m, 0 = closed)."""
        return float(-self.sim.data.get_joint_qpos("drawer_slide"))

    def object_poses(self) -> dict:
        d, m = self.sim.data, self.sim.model
        mug = m.body_name2id("mug_main")
        return {"mug_pos": d.body_xpos[mug].copy(), "mug_quat": d.body_xquat[mug].copy(),
                "drawer_handle_pos": d.site_xpos[m.site_name2id("drawer_handle_site")].copy(),
                "drawer_interior_pos": d.site_xpos[m.site_name2id("drawer_interior_site")].copy(),
                "drawer_opening": np.array([self.drawer_opening()])}

    def mug_in_drawer(self) -> bool:
        d, m = self.sim.data, self.sim.model
        mug = d.body_xpos[m.body_name2id("mug_main")]
        inner = d.site_xpos[m.site_name2id("drawer_interior_site")]
        half_x, half_y = DRAWER["depth"] / 2 - 0.02, DRAWER["width"] / 2 - 0.02
        return bool(abs(mug[0] - inner[0]) < half_x and abs(mug[1] - inner[1]) < half_y
                    and mug[2] < inner[2] + MUG["half_height"] * 1.3)

    def success(self) -> bool:
        return self.drawer_opening() < 0.01 and self.mug_in_drawer() and not self.grasping()

    def subtask_signals(self) -> dict:
        return {"open": self.drawer_opening() > DRAWER["travel"] * 0.8, "grasp": self.grasping(),
                "place": self.mug_in_drawer() and not self.grasping(), "close": self.success()}


class MugHang(TaskEnv):
    """Hang a mug by its handle on a mug tree (the paper's custom task). Scene: the mug as in
    MugCleanup, center x in [-0.12, -0.02], y in [-0.22, -0.08], yaw uniform; a mug tree (24 cm
    post, one 10 cm arm pointing at the robot's right, -y, tilted up 7 degrees) at x = 0.1,
    y = 0.12. Success: the mug is off the table, out of the gripper, and touching the tree's arm
    (hanging on it). Subtasks: 1 grasp the mug (frame: mug; ends when grasped), 2 hang it (frame:
    tree; ends at success)."""
    robosuite_env = "CotrainScene"
    horizon = 700
    settle_steps = 30       # the released mug swings under the arm: it must still hang after
    object_name = "mug"
    fixture_body = "hook_main"
    subtasks = (("grasp", "mug"), ("hang", "hook"))
    tree_pos = (0.1, 0.12)

    def scene_kwargs(self):
        _register_scene_env()
        p = self.domain.physics
        return dict(objects=[("mug", mug_xml(p.object_size_scale), True, None),
                             ("hook", hook_xml(), False, (*self.tree_pos, 0.8 + HOOK["height"] / 2))])

    def _place_objects(self, rng):
        p = self.domain.physics
        x = rng.uniform(-0.12, -0.02) + p.placement_shift[0]
        y = rng.uniform(-0.22, -0.08) + p.placement_shift[1]
        yaw = rng.uniform(0, 2 * np.pi)
        z = 0.8 + MUG["half_height"] * p.object_size_scale + 0.002
        self.sim.data.set_joint_qpos("mug_joint0", np.array([x, y, z, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))

    def object_poses(self) -> dict:
        d, m = self.sim.data, self.sim.model
        mug = m.body_name2id("mug_main")
        return {"mug_pos": d.body_xpos[mug].copy(), "mug_quat": d.body_xquat[mug].copy(),
                "hook_tip_pos": d.site_xpos[m.site_name2id("hook_tip_site")].copy(),
                "hook_root_pos": d.site_xpos[m.site_name2id("hook_root_site")].copy()}

    def _touching(self, body_a: str, body_b: str) -> bool:
        d, m = self.sim.data, self.sim.model
        a, b = m.body_name2id(body_a), m.body_name2id(body_b)
        for i in range(d.ncon):
            ba, bb = m.geom_bodyid[d.contact[i].geom1], m.geom_bodyid[d.contact[i].geom2]
            if {ba, bb} == {a, b}:
                return True
        return False

    def hanging(self) -> bool:
        mug_z = self.sim.data.body_xpos[self.sim.model.body_name2id("mug_main")][2]
        return bool(mug_z > 0.8 + 0.06 and self._touching("mug_main", "hook_main")
                    and not self._touching("mug_main", "table"))

    def success(self) -> bool:
        return self.hanging() and not self.grasping()

    def subtask_signals(self) -> dict:
        return {"grasp": self.grasping(), "hang": self.success()}


TASK_CLASSES = {"NutAssembly": NutAssembly, "MugCleanup": MugCleanup, "MugHang": MugHang}


def make_env(task: str, domain: str = "source", control: str = "osc", cameras=(), image_size: int = 84,
             joint_kp: float = JOINT_KP) -> TaskEnv:
    get_domain(task, domain)
    if control not in ("osc", "joint"):
        raise TaskError(f"unknown control mode {control!r}; choose osc or joint")
    return TASK_CLASSES[task](task, domain, control, cameras, image_size, joint_kp)


# ----------------------------------------------------------------------------------------------
# scripted experts (stand-in for the paper's teleoperation)
# ----------------------------------------------------------------------------------------------
def _yaw_of(quat_wxyz) -> float:
    w, x, y, z = quat_wxyz
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _quat_xyzw_to_mat(q):
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _rotvec(R):
    """Axis-angle vector of rotation matrix R."""
    cos = np.clip((np.trace(R) - 1) / 2, -1, 1)
    angle = np.arccos(cos)
    if angle < 1e-6:
        return np.zeros(3)
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


_DOWN = np.diag([1.0, -1.0, -1.0])  # gripper pointing down, fingers closing along world y


class WaypointExpert:
    """Drives the end effector through a list of (position, yaw, gripper, speed) waypoints with
    OSC_POSE delta actions: a proportional step toward each waypoint, capped at `speed` m/step.
    Human-like variation from the seed: overall speed (x0.8-1.2), small action noise, and small
    offsets of the approach heights."""

    def __init__(self, env: TaskEnv, seed: int, noise: float = 0.02):
        self.env = env
        self.rng = np.random.default_rng(seed + 7919)
        self.speed_scale = self.rng.uniform(0.8, 1.2)
        self.noise = noise
        self.plan = []       # list of dicts, consumed in order
        self.hold = 0

    def pose_action(self, obs, target_pos, target_yaw, grip, speed):
        pos = obs["robot0_eef_pos"]
        d = np.asarray(target_pos) - pos
        step = speed * self.speed_scale
        dist = np.linalg.norm(d)
        d = 2.0 * d  # proportional gain 2: overcomes the OSC's steady-state sag under load
        if np.linalg.norm(d) > step:
            d = d / np.linalg.norm(d) * step
        R = _quat_xyzw_to_mat(obs["robot0_eef_quat"])
        R_goal = _rot_z(target_yaw) @ _DOWN
        rv = _rotvec(R_goal @ R.T)
        a = np.zeros(7)
        a[:3] = np.clip(d / 0.05, -1, 1)   # OSC_POSE output_max: 0.05 m
        a[3:6] = np.clip(rv / 0.5 * 0.6, -1, 1)  # output_max: 0.5 rad
        a[:6] += self.noise * self.rng.standard_normal(6) * (dist > 0.01)
        a[6] = grip
        return a, dist, np.linalg.norm(rv)


class NutAssemblyExpert(WaypointExpert):
    """Grasp the nut by its handle (fingers across the handle), lift, carry the nut's center over
    the peg (read from the state, so a moved peg is followed), lower it on, release, back off.
    In a low-friction domain it moves slower once the nut is held."""

    def __init__(self, env, seed, noise=0.02):
        super().__init__(env, seed, noise)
        self.phase = "approach"
        self.count = 0
        self.hover = 0.10 + self.rng.uniform(-0.01, 0.01)
        self.grip_offset = None

    def _grasp_yaw(self, obs):
        # fingers close along the eef y axis; the handle is narrow along the nut's local y
        yaw = _yaw_of(obs["nut_quat"])
        cur = _yaw_of_mat(_quat_xyzw_to_mat(obs["robot0_eef_quat"]) @ _DOWN.T)
        # the gripper is symmetric under a half turn: pick the closest equivalent yaw
        return cur + (yaw - cur + np.pi / 2) % np.pi - np.pi / 2

    def act(self, obs):
        p = self.env.domain.physics
        carry_speed = 0.015 if p.object_friction_scale < 0.8 or p.object_mass_scale > 1.5 else 0.02
        h, peg = obs["handle_pos"], obs["peg_pos"]
        if self.phase == "approach":
            self.yaw = self._grasp_yaw(obs)
            a, dist, ang = self.pose_action(obs, h + [0, 0, self.hover], self.yaw, -1, 0.025)
            if dist < 0.01 and ang < 0.05:
                self.phase = "descend"
        elif self.phase == "descend":
            a, dist, _ = self.pose_action(obs, h + [0, 0, -0.005], self.yaw, -1, 0.012)
            if dist < 0.006:
                self.phase, self.count = "close", 0
        elif self.phase == "close":
            a, _, _ = self.pose_action(obs, h + [0, 0, -0.005], self.yaw, 1, 0.01)
            self.count += 1
            if self.count >= 10:
                # nut center relative to the gripper, fixed while held
                self.grip_offset = obs["robot0_eef_pos"][:2] - obs["nut_pos"][:2]
                # carry height: the nut's bottom 5 cm above the peg's top (peg half-height 0.1 m)
                self.lift_xy = obs["robot0_eef_pos"][:2].copy()
                self.lift_z = obs["peg_pos"][2] + 0.1 + 0.05 + 0.01 + \
                    (obs["robot0_eef_pos"][2] - obs["nut_pos"][2]) + self.rng.uniform(0, 0.02)
                # turn the nut while carrying so its handle points away from the peg's far side
                # (-x, +y or -y, whichever is closest): with the handle toward +x the hand would
                # have to reach 5.4 cm past the peg, at the edge of the Panda's workspace. The
                # peg's half-diagonal (2.26 cm) fits the nut's hole (2.28 cm) at any yaw.
                psi = _yaw_of(obs["nut_quat"])
                turns = [_wrap(g - psi) for g in (np.pi, np.pi / 2, -np.pi / 2)]
                self.carry_yaw = self.yaw + min(turns, key=abs)
                self.phase = "lift"
        elif self.phase == "lift":
            target = [*self.lift_xy, self.lift_z]
            a, dist, ang = self.pose_action(obs, target, self.carry_yaw, 1, carry_speed)
            if abs(obs["robot0_eef_pos"][2] - self.lift_z) < 0.01 and ang < 0.1:
                self.phase = "carry"
        elif self.phase == "carry":
            xy = peg[:2] + (obs["robot0_eef_pos"][:2] - obs["nut_pos"][:2])
            a, dist, _ = self.pose_action(obs, [*xy, self.lift_z], self.carry_yaw, 1, carry_speed)
            if np.linalg.norm(obs["nut_pos"][:2] - peg[:2]) < 0.006:
                self.phase = "lower"
        elif self.phase == "lower":
            xy = peg[:2] + (obs["robot0_eef_pos"][:2] - obs["nut_pos"][:2])
            z = self.env.env.table_offset[2] + 0.03 + (obs["robot0_eef_pos"][2] - obs["nut_pos"][2])
            off = np.linalg.norm(obs["nut_pos"][:2] - peg[:2])
            near_top = obs["nut_pos"][2] < peg[2] + 0.1 + 0.04
            recentre = off > 0.004 and near_top
            if recentre:  # re-centre over the peg before going down its length
                z = obs["robot0_eef_pos"][2]
            a, dist, _ = self.pose_action(obs, [*xy, z], self.carry_yaw, 1, 0.01)
            if obs["nut_pos"][2] < self.env.env.table_offset[2] + 0.04 or (dist < 0.005 and not recentre):
                self.phase, self.count = "release", 0
        elif self.phase == "release":
            a, _, _ = self.pose_action(obs, obs["robot0_eef_pos"], self.carry_yaw, -1, 0.01)
            self.count += 1
            if self.count >= 6:
                self.phase = "retreat"
        else:  # retreat: straight up, gripper open
            target = obs["robot0_eef_pos"] + [0, 0, 0.05]
            a, _, _ = self.pose_action(obs, target, self.carry_yaw, -1, 0.02)
        return a


def _wrap(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


def _yaw_of_mat(R) -> float:
    return float(np.arctan2(R[1, 0], R[0, 0]))


class MugCleanupExpert(WaypointExpert):
    """Open the drawer by its handle, grasp the mug around its body (fingers on either side of
    the cup, clear of the handle), set it in the drawer, back out and push the drawer shut. All
    targets are read from the state, so a moved cabinet, a smaller or heavier mug and a stiffer
    slide are followed; with a stiffer slide the pull is slower."""

    def __init__(self, env, seed, noise=0.02):
        super().__init__(env, seed, noise)
        self.phase, self.count = "to_handle", 0
        self.hover = 0.08 + self.rng.uniform(-0.01, 0.01)
        self.grip_depth = 0.03 + self.rng.uniform(-0.003, 0.003)  # fingertips below the rim

    def act(self, obs):
        p = self.env.domain.physics
        h = obs["drawer_handle_pos"]
        eef = obs["robot0_eef_pos"]
        half_h = MUG["half_height"] * p.object_size_scale
        yaw_handle = 0.0  # fingers close along y, across the vertical handle bar
        ph = self.phase
        half_open = 0.0  # fingers half open: clear of the cabinet front while around the bar
        if ph == "to_handle":
            a, dist, ang = self.pose_action(obs, h + [0, 0, self.hover], yaw_handle, half_open, 0.025)
            if dist < 0.01 and ang < 0.05:
                self.phase = "down_handle"
        elif ph == "down_handle":
            a, dist, _ = self.pose_action(obs, h, yaw_handle, half_open, 0.012)
            if dist < 0.005:
                self.phase, self.count = "grip_handle", 0
        elif ph == "grip_handle":
            a, _, _ = self.pose_action(obs, h, yaw_handle, 1, 0.01)
            self.count += 1
            if self.count >= 8:
                self.pull_x = h[0] - DRAWER["travel"] * 0.97
                self.phase = "pull"
        elif ph == "pull":
            speed = 0.008 if p.fixture_damping_scale > 1.5 else 0.012
            a, dist, _ = self.pose_action(obs, [self.pull_x, h[1], h[2]], yaw_handle, 1, speed)
            if obs["drawer_opening"][0] > DRAWER["travel"] * 0.93 or dist < 0.004:
                self.phase, self.count = "let_go", 0
        elif ph == "let_go":
            a, _, _ = self.pose_action(obs, eef, yaw_handle, -1, 0.01)
            self.count += 1
            if self.count >= 6:
                self.phase = "up"
        elif ph == "up":
            a, dist, _ = self.pose_action(obs, [eef[0], eef[1], h[2] + 0.12], yaw_handle, -1, 0.02)
            if dist < 0.01:
                self.phase = "to_mug"
        elif ph in ("to_mug", "down_mug", "grip_mug"):
            a = self.grasp_mug(obs)
            if self.phase == "lift":
                self.lift = [eef[0], eef[1], h[2] + 0.17]
        elif ph == "lift":
            speed = 0.016 if p.object_mass_scale > 1.5 else 0.025
            a, dist, _ = self.pose_action(obs, self.lift, self.yaw, 1, speed)
            if dist < 0.01:
                self.phase = "carry"
        elif ph == "carry":
            # mug just behind the front panel's inner face (itself 4.7 cm behind the handle bar),
            # >= 11 cm in front of the cabinet: the hand (~20 cm long) stays clear of the
            # cabinet's top whatever its yaw
            # (plus the handle's reach when it points back at the front panel, or a finger's
            # thickness when the fingers line up along x)
            r = MUG["radius"] * p.object_size_scale
            mug_yaw = _yaw_of(obs["mug_quat"])
            handle_back = max(0.0, -np.cos(mug_yaw)) * 0.03
            finger_back = abs(np.sin(mug_yaw)) * 0.025  # a finger sits on the panel side
            goal = np.array([h[0] + 0.047 + r + 0.012 + max(handle_back, finger_back), h[1]])
            xy = goal + (eef[:2] - obs["mug_pos"][:2])
            speed = 0.016 if p.object_mass_scale > 1.5 else 0.025
            a, dist, _ = self.pose_action(obs, [*xy, self.lift[2]], self.yaw, 1, speed)
            if np.linalg.norm(obs["mug_pos"][:2] - goal) < 0.008:
                self.goal = goal
                self.phase = "lower"
        elif ph == "lower":
            xy = self.goal + (eef[:2] - obs["mug_pos"][:2])
            z = obs["drawer_interior_pos"][2] + half_h + 0.01 + (eef[2] - obs["mug_pos"][2])
            a, dist, _ = self.pose_action(obs, [*xy, z], self.yaw, 1, 0.012)
            if dist < 0.006:
                self.phase, self.count = "release", 0
        elif ph == "release":
            a, _, _ = self.pose_action(obs, eef, self.yaw, -1, 0.01)
            self.count += 1
            if self.count >= 8:
                self.phase = "back_up"
        elif ph == "back_up":
            a, dist, _ = self.pose_action(obs, [eef[0], eef[1], h[2] + 0.14], self.yaw, -1, 0.02)
            if dist < 0.01:
                self.phase = "to_front"
        elif ph == "to_front":
            # behind the handle (robot side), at handle height, fingers closed: a flat pusher
            target = h + [-0.04, 0, 0.01]
            a, dist, ang = self.pose_action(obs, target + [0, 0, 0.08] if eef[2] > h[2] + 0.05 and
                                            np.linalg.norm(eef[:2] - target[:2]) > 0.01 else target,
                                            yaw_handle, 1, 0.02)
            if np.linalg.norm(eef - target) < 0.008:
                self.phase = "push"
        else:  # push the drawer shut, then back away
            closed_x = h[0] + obs["drawer_opening"][0]
            if obs["drawer_opening"][0] > 0.004:
                a, _, _ = self.pose_action(obs, [closed_x + 0.01, h[1], h[2] + 0.01], yaw_handle, 1, 0.012)
            else:
                a, _, _ = self.pose_action(obs, eef + [-0.03, 0, 0.02], yaw_handle, 1, 0.02)
        return a

    def grasp_mug(self, obs):
        """Phases to_mug -> down_mug -> grip_mug: fingers on either side of the cup, across
        the handle's direction, 3 cm below the rim; sets phase "lift" when the grip is closed."""
        half_h = MUG["half_height"] * self.env.domain.physics.object_size_scale
        m = obs["mug_pos"]
        if self.phase == "to_mug":
            self.yaw = self._closest_yaw(obs, _yaw_of(obs["mug_quat"]))
            a, dist, ang = self.pose_action(obs, m + [0, 0, half_h + self.hover], self.yaw, -1, 0.03)
            if dist < 0.01 and ang < 0.05:
                self.phase = "down_mug"
        elif self.phase == "down_mug":
            a, dist, _ = self.pose_action(obs, m + [0, 0, half_h - self.grip_depth], self.yaw, -1, 0.015)
            if dist < 0.005:
                self.phase, self.count = "grip_mug", 0
        else:
            a, _, _ = self.pose_action(obs, m + [0, 0, half_h - self.grip_depth], self.yaw, 1, 0.01)
            self.count += 1
            if self.count >= 10:
                self.phase = "lift"
        return a

    def _closest_yaw(self, obs, yaw):
        cur = _yaw_of_mat(_quat_xyzw_to_mat(obs["robot0_eef_quat"]) @ _DOWN.T)
        return cur + (yaw - cur + np.pi / 2) % np.pi - np.pi / 2


def _quat_wxyz_to_mat(q):
    w, x, y, z = q
    return _quat_xyzw_to_mat((x, y, z, w))


class MugHangExpert(MugCleanupExpert):
    """Grasp the mug around its body, turn it so the handle points along +-x (its loop then faces
    the tree's arm), bring the loop's center in line with the arm beyond its tip, slide it along
    the arm toward the post, lower it onto the arm, let go and back off upward."""

    def __init__(self, env, seed, noise=0.02):
        super().__init__(env, seed, noise)
        self.phase = "to_mug"
        self.along = 0.6 + self.rng.uniform(-0.05, 0.05)  # where on the arm the loop ends up

    def loop_center(self, obs):
        """Center of the handle's opening in world coordinates (from the mug's pose)."""
        sc = self.env.domain.physics.object_size_scale
        r, h, arm = MUG["radius"] * sc, MUG["half_height"] * sc, 0.028 * sc
        local = np.array([r + (arm - 0.006) / 2, 0.0, (0.7 * h - 0.004 + (-0.5 * h + 0.004)) / 2])
        return obs["mug_pos"] + _quat_wxyz_to_mat(obs["mug_quat"]) @ local

    def act(self, obs):
        p = self.env.domain.physics
        eef = obs["robot0_eef_pos"]
        half_h = MUG["half_height"] * p.object_size_scale
        tip, root = obs["hook_tip_pos"], obs["hook_root_pos"]
        axis = (tip - root) / np.linalg.norm(tip - root)
        ph = self.phase
        if ph in ("to_mug", "down_mug", "grip_mug"):
            a = self.grasp_mug(obs)
            if self.phase == "lift":  # grasp done
                mug_yaw = _yaw_of(obs["mug_quat"])
                turns = [_wrap(g - mug_yaw) for g in (0.0, np.pi)]
                self.hang_yaw = self.yaw + min(turns, key=abs)
                self.carry_z = tip[2] + 0.10
                self.phase = "lift_turn"
            return a
        speed = 0.015 if p.object_mass_scale > 1.5 else 0.02
        offset = eef - self.loop_center(obs)  # eef relative to the loop, fixed while held
        if ph == "lift_turn":
            a, dist, ang = self.pose_action(obs, [eef[0], eef[1], self.carry_z], self.hang_yaw, 1, speed)
            if abs(eef[2] - self.carry_z) < 0.01 and ang < 0.05:
                self.phase = "above_start"
        elif ph == "above_start":
            start = tip + 0.05 * axis
            a, dist, _ = self.pose_action(obs, [*(start + offset)[:2], self.carry_z], self.hang_yaw, 1, speed)
            if dist < 0.008:
                self.phase = "down_start"
        elif ph == "down_start":
            start = tip + 0.05 * axis
            a, dist, _ = self.pose_action(obs, start + offset, self.hang_yaw, 1, 0.012)
            if np.linalg.norm(self.loop_center(obs) - start) < 0.004:
                self.phase = "slide"
        elif ph == "slide":
            goal = root + self.along * (tip - root)
            a, dist, _ = self.pose_action(obs, goal + offset, self.hang_yaw, 1, 0.008)
            if np.linalg.norm(self.loop_center(obs) - goal) < 0.004:
                self.settle_target = eef + [0, 0, -0.02]
                self.phase = "settle"
        elif ph == "settle":
            a, dist, _ = self.pose_action(obs, self.settle_target, self.hang_yaw, 1, 0.006)
            if dist < 0.004 or self.env._touching("mug_main", "hook_main"):
                self.phase, self.count = "release", 0
        elif ph == "release":
            a, _, _ = self.pose_action(obs, eef, self.hang_yaw, -1, 0.01)
            self.count += 1
            if self.count >= 8:
                self.phase = "retreat"
        else:
            a, _, _ = self.pose_action(obs, eef + [0, 0, 0.05], self.hang_yaw, -1, 0.015)
        return a


EXPERTS = {"NutAssembly": NutAssemblyExpert, "MugCleanup": MugCleanupExpert, "MugHang": MugHangExpert}


def make_expert(env: TaskEnv, seed: int):
    return EXPERTS[env.task](env, seed)


# ----------------------------------------------------------------------------------------------
# episodes: run the expert, record, replay joint targets
# ----------------------------------------------------------------------------------------------
def run_expert_episode(env: TaskEnv, seed: int, record: bool = True, settle: int = None) -> dict:
    """One expert episode from the initial state of `seed`. Stops `settle` steps (default: the
    task's) after the first success, or at the horizon; the episode succeeds if the task is still
    solved at its last step. Returns success, length, and (record=True) per-step arrays:
    obs_<key>, actions (controller space), joint_actions (joint targets + gripper), states,
    subtask signals."""
    settle = env.settle_steps if settle is None else settle
    obs = env.reset(seed)
    expert = make_expert(env, seed)
    steps = {"states": [], "actions": [], "joint_actions": []}
    done_at = None
    for t in range(env.horizon):
        if record:
            steps["states"].append(env.get_state())
            for k, v in obs.items():
                steps.setdefault(f"obs_{k}", []).append(v)
        a = expert.act(obs)
        obs = env.step(a)
        if record:
            steps["actions"].append(a)
            steps["joint_actions"].append(env.joint_target())
            for k, v in env.subtask_signals().items():
                steps.setdefault(f"signal_{k}", []).append(v)
        if done_at is None and env.success():
            done_at = t
        if done_at is not None and t - done_at >= settle:
            break
    out = {"success": done_at is not None and env.success(), "length": env.t, "seed": seed}
    if record:
        out.update({k: np.asarray(v) for k, v in steps.items()})
    return out


def replay_joint_actions(env: TaskEnv, states0, joint_actions) -> bool:
    """Replay recorded absolute joint targets + gripper from a recorded initial state in a
    joint-control env; True if the task succeeds at any step."""
    if env.control != "joint":
        raise TaskError("replay needs an env made with control='joint'")
    env.reset(0)
    env.set_state(states0)
    ok = False
    for a in joint_actions:
        env.step(a)
        ok = ok or env.success()
    return ok


# ----------------------------------------------------------------------------------------------
# command line: check the experts, save one frame per task x domain
# ----------------------------------------------------------------------------------------------
def check_experts(task_names, domains, episodes: int, first_seed: int = 0) -> list:
    """Expert success over `episodes` seeded episodes per task x domain (no recording)."""
    import time
    from tqdm import tqdm
    rows = []
    for task in task_names:
        for domain in domains:
            env = make_env(task, domain)
            t0, results = time.time(), []
            for s in tqdm(range(first_seed, first_seed + episodes), desc=f"{task}/{domain}", leave=False):
                results.append(run_expert_episode(env, s, record=False))
            ok = [r["success"] for r in results]
            rows.append({"task": task, "domain": domain, "episodes": episodes, "success": float(np.mean(ok)),
                         "failed_seeds": [r["seed"] for r in results if not r["success"]],
                         "mean_length": float(np.mean([r["length"] for r in results])),
                         "mean_length_success": float(np.mean([r["length"] for r in results if r["success"]] or [np.nan])),
                         "seconds": time.time() - t0})
    return rows


def check_replay(task_names, domains, episodes: int, first_seed: int = 0, joint_kp: float = JOINT_KP) -> list:
    """Run expert episodes, replay each successful one's joint targets from its initial state in
    a joint-control env, count the replays that succeed."""
    rows = []
    for task in task_names:
        for domain in domains:
            env, jenv = make_env(task, domain), make_env(task, domain, control="joint", joint_kp=joint_kp)
            eps = [run_expert_episode(env, s) for s in range(first_seed, first_seed + episodes)]
            ok = [replay_joint_actions(jenv, e["states"][0], e["joint_actions"]) for e in eps if e["success"]]
            rows.append({"task": task, "domain": domain, "episodes": episodes, "joint_kp": joint_kp,
                         "expert_success": sum(e["success"] for e in eps), "replay_success": int(sum(ok))})
    return rows


def save_frames(task_names, out_dir: str, seed: int = 0, size: int = 256):
    """One agentview frame per task x domain at the initial state of `seed` (README pictures)."""
    import imageio
    os.makedirs(out_dir, exist_ok=True)
    for task in task_names:
        row = []
        for domain in DOMAIN_NAMES:
            env = make_env(task, domain, cameras=("agentview",), image_size=size)
            img = env.reset(seed)["agentview_image"]
            imageio.imwrite(os.path.join(out_dir, f"{task}_{domain}.png"), img)
            row.append(img)
        imageio.imwrite(os.path.join(out_dir, f"{task}_domains.png"), np.concatenate(row, axis=1))


def main(argv=None):
    import common
    p = common.ArgumentParser(description="Check the scripted experts or save domain pictures.")
    p.add_argument("command", choices=["experts", "replay", "frames"],
                   help="experts: expert success; replay: expert episodes replayed through joint "
                        "targets; frames: one agentview picture per task x domain")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated task names")
    p.add_argument("--domains", default=",".join(DOMAIN_NAMES), help="comma-separated domain names")
    p.add_argument("--episodes", type=int, default=50, help="seeded episodes per task x domain")
    p.add_argument("--out", default=None, help="experts/replay: JSON file; frames: folder (default results/tasks)")
    p.add_argument("--joint-kp", type=float, default=JOINT_KP, help="stiffness of the joint-position controller")
    a = p.parse_args(argv)
    task_names, domains = a.tasks.split(","), a.domains.split(",")
    try:
        for t in task_names:
            for d in domains:
                get_domain(t, d)
    except TaskError as e:
        common.die(str(e))
    if a.episodes <= 0:
        common.die(f"--episodes must be positive, got {a.episodes}")
    if a.command == "frames":
        save_frames(task_names, a.out or "results/tasks")
        return
    if a.command == "replay":
        rows = check_replay(task_names, domains, a.episodes, joint_kp=a.joint_kp)
        print("\n".join(f"{r['task']} {r['domain']} kp={a.joint_kp:g}: expert {r['expert_success']}/{r['episodes']}, "
                        f"replayed {r['replay_success']}/{r['expert_success']}" for r in rows))
        if a.out:
            common.write_json(a.out, rows)
        return
    rows = check_experts(task_names, domains, a.episodes)
    lines = ["| task | domain | success | mean length (successes) | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['domain']} | {r['success']:.2f} ({round(r['success'] * r['episodes'])}/{r['episodes']}) | "
              f"{r['mean_length_success']:.0f} | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        common.write_json(a.out, rows)


if __name__ == "__main__":
    main()
