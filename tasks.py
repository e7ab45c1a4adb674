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
The scripted experts live in experts.py, the MJCF mug, drawer and mug tree in sim_objects.py.

    python tasks.py experts --episodes 50     # expert success per task x domain
    python tasks.py replay --episodes 5       # joint-target replay of expert episodes
    python tasks.py frames                    # results/tasks/<task>_domains.png
"""
import logging
import os
import time
from dataclasses import dataclass, field, replace

import imageio
import numpy as np
from tqdm import tqdm

import cli
import experts

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def _drop_import_noise(record) -> bool:
    """robosuite warns at import about its private macro file and two optional packages
    (robosuite_models, mink) that no task here uses; drop those lines, keep every other one."""
    return not any(s in record.getMessage() for s in ("macro file", "setup_macros", "robosuite_models", "mink"))


logging.getLogger("robosuite_logs").addFilter(_drop_import_noise)

from experts import make_expert, quat_wxyz_to_mat, quat_xyzw_to_mat  # noqa: E402  (experts.py)
from sim_objects import DRAWER, HOOK, MUG, drawer_xml, hook_xml, mug_xml, register_scene_env  # noqa: E402

TASK_NAMES = ("NutAssembly", "MugCleanup", "MugHang")
DOMAIN_NAMES = ("source", "target_visual", "target_physics", "target_visual_physics")
# The visual gap one part at a time (not in the dataset set): the agentview camera's shift alone,
# and the colors and light alone; which part breaks a policy (RESULTS "The image instrument").
PART_DOMAINS = ("target_visual_camera", "target_visual_appearance")
CONTROL_FREQ = 20  # Hz, robosuite default
# Joint-position stiffness (robosuite's controller scales it by the mass matrix, so it is 1/s^2):
# with robosuite's default kp = 50 the joints lag a 20 Hz target stream by 0.07-0.10 rad and most
# recorded expert trajectories do not replay; kp = 2500 (natural frequency 50 rad/s, like a real
# Franka's stiff joint impedance) lags < 0.01 rad and replays them (`python tasks.py replay`).
JOINT_KP = 2500
# robosuite OSC_POSE output_max: an action of 1 asks for 5 cm / 0.5 rad this step
OSC_POS_SCALE, OSC_ROT_SCALE = 0.05, 0.5
# initial-state seed ranges, disjoint so no evaluation episode starts where a demo did
# Initial-state seed ranges: seed demos, target demos, MimicGen scenes, evaluation (reported
# numbers) and validation (choosing recipes, checkpoints, hyperparameters): never shared.
# Initial-state seed ranges, one per use: seed demos, target demos, MimicGen scenes, evaluation
# (reported numbers), validation (choosing recipes, checkpoints, hyperparameters) and demo (one-off
# looks: the README's quick start, diagnostics, videos), so a look never spends evaluation seeds.
SEED_BASE = {"seed": 0, "target": 100_000, "generate": 200_000, "eval": 1_000_000, "valid": 2_000_000,
             "demo": 3_000_000}


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


# NutAssembly visual gap: a brown table, a near-black nut and peg (the blue-grey tint multiplies the
# nut's and peg's wood texture: they render dark brown to black, results/tasks/NutAssembly_domains.png),
# the robot's link tint, dimmer light from the side and the agentview camera moved by 2-3 cm.
# Physics gap: the square peg moves 3 cm toward the
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
# The agentview camera's framing for image policies, the same in every domain (a domain's
# camera_shift moves it further). "wide": robosuite's agentview (fovy 45 deg: the whole table and
# the robot base; at 64 px the nut is ~12 px across). "workspace": fovy 36 deg, moved 2 cm to the
# image's right and 2 cm down in the camera's own frame: the nut's start region and both pegs fill
# the frame, ~1.25x the pixels along each axis (results/tasks/NutAssembly_framings.png).
@dataclass(frozen=True)
class Framing:
    fovy: float = None          # vertical field of view (deg); None: robosuite's
    shift: tuple = (0.0, 0.0)   # (right, up) in the camera's frame (m)


FRAMINGS = {"wide": Framing(), "workspace": Framing(fovy=36.0, shift=(0.02, -0.02))}

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


def visual_part(d: Domain, part: str) -> Domain:
    """target_visual's gap reduced to one part: "camera" (the agentview shift alone) or
    "appearance" (every color and the light, the camera where the source has it)."""
    v = d.visual
    keep = VisualGap(camera_shift=v.camera_shift) if part == "camera" else replace(v, camera_shift=None)
    return Domain(f"target_visual_{part}", visual=keep)


def get_domain(task: str, domain: str) -> Domain:
    if task not in DOMAINS:
        raise TaskError(f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)}")
    if domain in PART_DOMAINS:
        return visual_part(DOMAINS[task]["target_visual"], domain.rsplit("_", 1)[1])
    if domain not in DOMAIN_NAMES:
        raise TaskError(f"unknown domain {domain!r}; choose from {', '.join(DOMAIN_NAMES + PART_DOMAINS)}")
    return DOMAINS[task][domain]


# ----------------------------------------------------------------------------------------------
# controllers
# ----------------------------------------------------------------------------------------------
def _quiet_robosuite():
    """robosuite logs a warning per unused controller part (head, legs, ...) at every env build."""
    from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.ERROR)
    for h in ROBOSUITE_DEFAULT_LOGGER.handlers:
        h.setLevel(logging.ERROR)


def controller_config(control: str, joint_kp: float = JOINT_KP) -> dict:
    """robosuite composite controller config for "osc" (OSC_POSE delta, 7-D) or "joint"
    (JOINT_POSITION absolute, limits widened, stiffness joint_kp, 7 joints + gripper = 8-D)."""
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
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
    # The gripper commands the expert gives. robosuite's Panda gripper moves by sign(command) each
    # step, so a policy's near-0 output opens or closes the fingers all the way: PolicyAgent
    # executes the nearest of these (a no-op where they are -1 / 1, since only the sign counts).
    gripper_levels = (-1.0, 1.0)
    object_name = None      # the manipulated object (robosuite object name)
    subtasks = ()           # (name, reference frame) in order; the signal `name` ends the subtask
    frames = {}             # reference frame -> (position obs key, orientation obs key or None)
    fixture_body = None     # body the object goes to

    def __init__(self, task, domain="source", control="osc", cameras=(), image_size=84, joint_kp=JOINT_KP,
                 offscreen=False, render="every", framing="wide"):
        import robosuite as suite  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
        _quiet_robosuite()
        self.task, self.domain, self.control = task, get_domain(task, domain), control
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.framing = FRAMINGS[framing]
        self.env = suite.make(
            self.robosuite_env, robots="Panda", controller_configs=controller_config(control, joint_kp),
            has_renderer=False, has_offscreen_renderer=bool(self.cameras) or offscreen,
            use_camera_obs=bool(self.cameras), camera_names=list(self.cameras) or "agentview",
            camera_heights=image_size, camera_widths=image_size, control_freq=CONTROL_FREQ,
            horizon=10_000, ignore_done=True, hard_reset=False, lite_physics=True,
            initialization_noise=None, **self.scene_kwargs())
        self.sim = self.env.sim
        self.render = render
        self._frames = True  # whether this step's camera observations are rendered (render="demand")
        if render == "demand":
            for cam in self.cameras:
                self._render_on_demand(f"{cam}_image")
        self._defaults = self._read_defaults()
        self._apply_domain()
        self.t = 0
        self._gripper = -1.0

    def _render_on_demand(self, name: str):
        """A camera observable that renders only while self._frames is set. Its sampling clock
        (which sub-step of a control step it renders after) keeps running as robosuite's does, so a
        frame rendered on demand is the frame rendering every step gives at that step."""
        from robosuite.utils.observables import sensor  # noqa: PLC0415 (robosuite is imported in __init__)
        ob = self.env._observables[name]
        render, blank = ob._sensor, np.zeros((self.image_size, self.image_size, 3), np.uint8)

        @sensor(modality=ob.modality)
        def on_demand(obs_cache):
            return render(obs_cache) if self._frames else blank
        self.env.modify_observable(name, "sensor", on_demand)

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
                    cam_pos=m.cam_pos.copy(), cam_fovy=m.cam_fovy.copy())

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
        # visuals: no shadows or reflections (cheaper renders on a CPU), then the domain's colors
        m.light_castshadow[:] = 0
        m.mat_reflectance[:] = 0
        m.mat_rgba[:] = d0["mat_rgba"]
        m.geom_rgba[:] = d0["geom_rgba"]
        m.light_diffuse[:] = d0["light_diffuse"]
        m.light_dir[:] = d0["light_dir"]
        m.cam_pos[:] = d0["cam_pos"]
        m.cam_fovy[:] = d0["cam_fovy"]
        self._frame_agentview(m)
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

    def _frame_agentview(self, m):
        """Point the agentview camera as self.framing says (FRAMINGS)."""
        cam, f = m.camera_name2id("agentview"), self.framing
        if f.fovy is not None:
            m.cam_fovy[cam] = f.fovy
        R = quat_wxyz_to_mat(m.cam_quat[cam])  # columns: the camera's right, up, -view axes
        m.cam_pos[cam] += R[:, 0] * f.shift[0] + R[:, 1] * f.shift[1]

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

    def step(self, action, frames: bool = True):
        """One control step. frames=False (render="demand"): this step's observation has no camera
        images (nothing renders them); with render="every" every step has them."""
        action = np.asarray(action, dtype=np.float64)
        self._gripper = float(action[-1])
        self._frames = frames or self.render == "every"
        obs, _, _, _ = self.env.step(action)
        self.t += 1
        out = self.observe(obs)
        self._frames = True
        return out

    def observe(self, obs=None) -> dict:
        """Low-dim observations (and images when cameras were asked for and this step renders
        them), plus object poses. `obs`: robosuite's observation dict of this step, if at hand
        (saves a render)."""
        if obs is None:
            obs = self.env._get_observations(force_update=True)
        out = {k: np.asarray(obs[k]) for k in ("robot0_joint_pos", "robot0_gripper_qpos",
                                               "robot0_eef_pos", "robot0_eef_quat")}
        out.update(self.object_poses())
        for cam in self.cameras if self._frames else ():
            out[f"{cam}_image"] = np.ascontiguousarray(obs[f"{cam}_image"][::-1])  # right side up
        if len(self.cameras) >= 2 and self._frames and \
                np.array_equal(out[f"{self.cameras[0]}_image"], out[f"{self.cameras[1]}_image"]):
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
    frames = {"SquareNut": ("nut_pos", "nut_quat"), "peg1": ("peg_pos", None)}  # obs keys (pos, quat wxyz)

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


def _place_mug(env: TaskEnv, rng):
    """The mug upright on the table: center x in [-0.12, -0.02], y in [-0.22, -0.08] (plus the
    domain's placement shift), yaw uniform in [0, 2 pi)."""
    p = env.domain.physics
    x = rng.uniform(-0.12, -0.02) + p.placement_shift[0]
    y = rng.uniform(-0.22, -0.08) + p.placement_shift[1]
    yaw = rng.uniform(0, 2 * np.pi)
    z = 0.8 + MUG["half_height"] * p.object_size_scale + 0.002
    env.sim.data.set_joint_qpos("mug_joint0", np.array([x, y, z, np.cos(yaw / 2), 0, 0, np.sin(yaw / 2)]))


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
    gripper_levels = (-1.0, 0.0, 1.0)  # 0 holds the fingers half open around the drawer handle
    object_name = "mug"
    fixture_body = "drawer_main"
    subtasks = (("open", "drawer"), ("grasp", "mug"), ("place", "drawer"), ("close", "drawer"))
    frames = {"drawer": ("drawer_handle_pos", None), "mug": ("mug_pos", "mug_quat")}
    cabinet_pos = (0.15, 0.2)

    def scene_kwargs(self):
        register_scene_env()
        p = self.domain.physics
        z = 0.8 + DRAWER["height"] / 2
        return dict(objects=[("mug", mug_xml(p.object_size_scale), True, None),
                             ("drawer", drawer_xml(5.0 * p.fixture_damping_scale), False, (*self.cabinet_pos, z))])

    def _place_objects(self, rng):
        _place_mug(self, rng)
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
    frames = {"mug": ("mug_pos", "mug_quat"), "hook": ("hook_root_pos", None)}
    tree_pos = (0.1, 0.12)

    def scene_kwargs(self):
        register_scene_env()
        p = self.domain.physics
        return dict(objects=[("mug", mug_xml(p.object_size_scale), True, None),
                             ("hook", hook_xml(), False, (*self.tree_pos, 0.8 + HOOK["height"] / 2))])

    def _place_objects(self, rng):
        _place_mug(self, rng)

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


RENDER_MODES = ("every", "demand")


def make_env(task: str, domain: str = "source", control: str = "osc", cameras=(), image_size: int = 84,
             joint_kp: float = JOINT_KP, offscreen: bool = False, render: str = "every",
             framing: str = "wide") -> TaskEnv:
    """A task env; `cameras` are rendered into the observations: every step (render="every"), or
    at the steps whose observation a policy will read (render="demand": step(a, frames=...);
    run_episode asks the agent's reads_next()). `offscreen` only makes a renderer available (for
    videos: `env.sim.render(...)` when asked)."""
    get_domain(task, domain)
    if control not in ("osc", "joint"):
        raise TaskError(f"unknown control mode {control!r}; choose osc or joint")
    if render not in RENDER_MODES:
        raise TaskError(f"unknown render mode {render!r}; choose {' or '.join(RENDER_MODES)}")
    if framing not in FRAMINGS:
        raise TaskError(f"unknown camera framing {framing!r}; choose {' or '.join(FRAMINGS)}")
    return TASK_CLASSES[task](task, domain, control, cameras, image_size, joint_kp, offscreen, render, framing)


def frame_pose(task: str, frame: str, obs: dict) -> np.ndarray:
    """4x4 world pose of a subtask's reference frame read from one step's observations (a fixed
    fixture's frame has the world's orientation). Works on live and on stored observations."""
    pos_key, quat_key = TASK_CLASSES[task].frames[frame]
    T = np.eye(4)
    T[:3, 3] = obs[pos_key]
    if quat_key is not None:
        T[:3, :3] = quat_wxyz_to_mat(obs[quat_key])
    return T


def eef_pose(obs: dict) -> np.ndarray:
    """4x4 world pose of the end effector (robosuite's eef quat is xyzw)."""
    x, y, z, w = obs["robot0_eef_quat"]
    T = np.eye(4)
    T[:3, :3] = quat_xyzw_to_mat((x, y, z, w))
    T[:3, 3] = obs["robot0_eef_pos"]
    return T


# ----------------------------------------------------------------------------------------------
# episodes: run the expert, record, replay joint targets; where a grasp closed and the nut went
# ----------------------------------------------------------------------------------------------
def run_episode(env: TaskEnv, seed: int, make_agent, record: bool = True, settle: int = None) -> dict:
    """One episode from the initial state of `seed`, driven by `make_agent(env, seed)` (an object
    with `act(obs)` returning an OSC action; it may set `done` when it has nothing left to do).
    Stops `settle` steps (default: the task's) after the first success or after the agent is done,
    or at the horizon; the episode succeeds if the task is still solved at its last step.
    Returns success, length, seed, the agent's `info` dict (if any), `reached` (each subtask's first
    step with its signal on, or None: where a failed episode stopped), and (record=True) per-step
    arrays: obs_<key>, actions (controller space), joint_actions (joint targets + gripper), states,
    signal_<subtask>."""
    settle = env.settle_steps if settle is None else settle
    obs = env.reset(seed)
    agent = make_agent(env, seed)
    steps = {"states": [], "actions": [], "joint_actions": []}
    done_at, reached = None, {name: None for name, _ in env.subtasks}
    for t in range(env.horizon):
        if record:
            steps["states"].append(env.get_state())
            for k, v in obs.items():
                if env.render == "every" or not k.endswith("_image"):  # on demand: frames at some steps only
                    steps.setdefault(f"obs_{k}", []).append(v)
        a = agent.act(obs)
        obs = env.step(a, frames=agent.reads_next() if hasattr(agent, "reads_next") else True)
        signals = env.subtask_signals()
        for k, v in signals.items():
            if v and reached[k] is None:
                reached[k] = t
        if record:
            steps["actions"].append(a)
            steps["joint_actions"].append(env.joint_target())
            for k, v in signals.items():
                steps.setdefault(f"signal_{k}", []).append(v)
        if done_at is None and (env.success() or getattr(agent, "done", False)):
            done_at = t
        if done_at is not None and t - done_at >= settle:
            break
    out = {"success": env.success(), "length": env.t, "seed": seed, "info": getattr(agent, "info", {}),
           "reached": reached}
    if record:
        out.update({k: np.asarray(v) for k, v in steps.items()})
    return out


def run_expert_episode(env: TaskEnv, seed: int, record: bool = True, settle: int = None,
                       expert: dict = None) -> dict:
    """One scripted-expert episode (see run_episode); `expert`: the NutAssembly expert's settings
    (experts.nut_expert; default the first expert's)."""
    return run_episode(env, seed, lambda e, s: make_expert(e, s, **(expert or {})), record, settle)


def replay_joint_actions(env: TaskEnv, states0, joint_actions, tracking_errors: list = None) -> bool:
    """Replay recorded absolute joint targets + gripper from a recorded initial state in a
    joint-control env; True if the task succeeds at any step. If `tracking_errors` is a list,
    each step's largest |joint position - target| (rad) is appended to it."""
    if env.control != "joint":
        raise TaskError("replay needs an env made with control='joint'")
    env.reset(0)
    env.set_state(states0)
    ok = False
    for a in joint_actions:
        obs = env.step(a)
        ok = ok or env.success()
        if tracking_errors is not None:
            tracking_errors.append(float(np.abs(obs["robot0_joint_pos"] - np.asarray(a)[:7]).max()))
    return ok


GRASP_POINT = {"NutAssembly": "handle_pos"}  # the observation the hand should close on
# The task-relevant state 04_analyze.py's state probe reads back from a policy's features
# (alignment.state_probe): the goal's xy (stored observation key, dims), which the physics gap
# fixes per domain, so "which domain" and "where the goal is" are one question there.
PROBE_STATE = {"NutAssembly": ("peg_pos", (0, 1)), "MugCleanup": ("drawer_interior_pos", (0, 1)),
               "MugHang": ("hook_tip_pos", (0, 1))}


def grasp_close(task: str, ep: dict) -> dict:
    """Where an episode's first close command came, from its recorded steps (run_episode with
    record=True): the step, the hand's height above the task's
    grasp point and its horizontal offset (mm), and its fastest speed over the 4 steps before
    (mm/step). {} for a task without a grasp point or an episode that never closes."""
    key = GRASP_POINT.get(task)
    grip = np.asarray(ep["joint_actions"])[:, -1]
    if key is None or f"obs_{key}" not in ep or not (grip > 0).any():
        return {}
    i = int(np.argmax(grip > 0))
    eef, p = np.asarray(ep["obs_robot0_eef_pos"]), np.asarray(ep[f"obs_{key}"])
    speed = np.linalg.norm(np.diff(eef[max(i - 4, 0):i + 1], axis=0), axis=1)
    return {"step": i, "dz_mm": round(1000 * float(eef[i, 2] - p[i, 2]), 2),
            "dxy_mm": round(1000 * float(np.linalg.norm(eef[i, :2] - p[i, :2])), 2),
            "speed_mm": round(1000 * float(speed.max()), 2) if len(speed) else 0.0}


def mean_close(closes: list) -> dict:
    """Mean of grasp_close results over episodes ({} entries skipped; {} if none)."""
    closes = [c for c in closes if c]
    return {k: float(np.mean([c[k] for c in closes])) for k in ("dz_mm", "dxy_mm", "speed_mm")} if closes else {}


def nut_path(ep: dict) -> dict:
    """Where a NutAssembly episode's nut went, from its recorded steps: the highest it was lifted
    (mm above its start), its closest approach to the peg's axis while above the peg's top (mm;
    None if never that high), and where it ended (mm off the axis, mm above its start); with the
    nut's orientation recorded, also its yaw off the peg's square and its tilt at that closest
    approach. Tells a slip (never lifted) from a missed insertion (lifted, off the axis or turned)
    after the grasp. {} for an episode without a nut and a peg (the other tasks)."""
    if "obs_nut_pos" not in ep or "obs_peg_pos" not in ep:
        return {}
    nut, peg = np.asarray(ep["obs_nut_pos"]), np.asarray(ep["obs_peg_pos"])
    off = np.linalg.norm(nut[:, :2] - peg[:, :2], axis=1)
    above = nut[:, 2] > peg[:, 2] + 0.1           # peg half-height 0.1 m: above its top
    out = {"lift_mm": round(1000 * float(nut[:, 2].max() - nut[0, 2]), 1),
           "min_peg_xy_mm": round(1000 * float(off[above].min()), 1) if above.any() else None,
           "final_peg_xy_mm": round(1000 * float(off[-1]), 1),
           "final_z_mm": round(1000 * float(nut[-1, 2] - nut[0, 2]), 1)}
    if "obs_nut_quat" in ep and above.any():
        # at the closest approach above the top: the square hole's yaw off the (axis-aligned,
        # square) peg's, folded to [-45, 45] deg (0 = aligned: 6.8 mm clearance; 45: 0.2 mm), and
        # the nut's tilt from level
        i = int(np.flatnonzero(above)[np.argmin(off[above])])
        w, x, y, z = np.asarray(ep["obs_nut_quat"])[i]
        yaw = np.degrees(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))
        out["yaw_off_deg"] = round(float((yaw + 45) % 90 - 45), 1)
        out["tilt_deg"] = round(float(np.degrees(np.arccos(np.clip(1 - 2 * (x * x + y * y), -1, 1)))), 1)
    return out


# ----------------------------------------------------------------------------------------------
# command line: check the experts, save one frame per task x domain
# ----------------------------------------------------------------------------------------------
def check_experts(task_names, domains, episodes: int, first_seed: int = 0, expert: dict = None) -> list:
    """Expert success over `episodes` seeded episodes per task x domain, and where its grasps close
    (grasp_close, mean over the episodes)."""
    rows = []
    for task in task_names:
        for domain in domains:
            env = make_env(task, domain)
            t0, results = time.time(), []
            for s in tqdm(range(first_seed, first_seed + episodes), desc=f"{task}/{domain}", leave=False):
                r = run_expert_episode(env, s, expert=expert)
                results.append({"success": r["success"], "seed": s, "length": r["length"],
                                "close": grasp_close(task, r)})
            ok = [r["success"] for r in results]
            rows.append({"task": task, "domain": domain, "episodes": episodes, "success": float(np.mean(ok)),
                         "failed_seeds": [r["seed"] for r in results if not r["success"]],
                         "mean_length": float(np.mean([r["length"] for r in results])),
                         "mean_length_success": float(np.mean([r["length"] for r in results if r["success"]]
                                                              or [np.nan])),
                         "close": mean_close([r["close"] for r in results]),
                         "seconds": time.time() - t0})
    return rows


def check_replay(task_names, domains, episodes: int, first_seed: int = 0, joint_kp: float = JOINT_KP,
                 expert: dict = None) -> list:
    """Run expert episodes, replay each successful one's joint targets from its initial state in
    a joint-control env, count the replays that succeed."""
    rows = []
    for task in task_names:
        for domain in domains:
            env, jenv = make_env(task, domain), make_env(task, domain, control="joint", joint_kp=joint_kp)
            eps = [run_expert_episode(env, s, expert=expert) for s in range(first_seed, first_seed + episodes)]
            err = []
            ok = [replay_joint_actions(jenv, e["states"][0], e["joint_actions"], err) for e in eps if e["success"]]
            rows.append({"task": task, "domain": domain, "episodes": episodes, "joint_kp": joint_kp,
                         "expert_success": sum(e["success"] for e in eps), "replay_success": int(sum(ok)),
                         "mean_tracking_error_rad": float(np.mean(err)) if err else float("nan")})
    return rows


def save_frames(task_names, out_dir: str, seed: int = 0, size: int = 256):
    """One agentview frame per task x domain at the initial state of `seed` (README pictures)."""
    os.makedirs(out_dir, exist_ok=True)
    for task in task_names:
        row = []
        for domain in DOMAIN_NAMES:
            env = make_env(task, domain, cameras=("agentview",), image_size=size)
            img = env.reset(seed)["agentview_image"]
            imageio.imwrite(os.path.join(out_dir, f"{task}_{domain}.png"), img)
            row.append(img)
        imageio.imwrite(os.path.join(out_dir, f"{task}_domains.png"), np.concatenate(row, axis=1))
        # the visual gap one part at a time: source, camera shift alone, appearance alone, both
        parts = [row[0]] + [make_env(task, d, cameras=("agentview",), image_size=size).reset(seed)["agentview_image"]
                            for d in PART_DOMAINS] + [row[1]]
        imageio.imwrite(os.path.join(out_dir, f"{task}_visual_parts.png"), np.concatenate(parts, axis=1))
        # the agentview framings (FRAMINGS), source and target_visual
        framed = [make_env(task, d, cameras=("agentview",), image_size=size, framing=f).reset(seed)["agentview_image"]
                  for f in FRAMINGS for d in DOMAIN_NAMES[:2]]
        imageio.imwrite(os.path.join(out_dir, f"{task}_framings.png"), np.concatenate(framed, axis=1))


def main(argv=None):
    p = cli.ArgumentParser(description="Check the scripted experts or save domain pictures.")
    p.add_argument("command", choices=["experts", "replay", "frames"],
                   help="experts: expert success; replay: expert episodes replayed through joint "
                        "targets; frames: one agentview picture per task x domain")
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated task names")
    p.add_argument("--domains", default=",".join(DOMAIN_NAMES), help="comma-separated domain names")
    p.add_argument("--episodes", type=int, default=50, help="seeded episodes per task x domain")
    p.add_argument("--out", default=None, help="experts/replay: JSON file; frames: folder (default results/tasks)")
    p.add_argument("--joint-kp", type=float, default=JOINT_KP, help="stiffness of the joint-position controller")
    p.add_argument("--first-seed", type=int, default=0, help="experts/replay: the first episode seed")
    p.add_argument("--nut-expert", default="first", choices=list(experts.NUT_EXPERTS),
                   help="experts/replay: which NutAssembly expert (experts.NUT_EXPERTS; the flags "
                        "below change one of its settings)")
    p.add_argument("--nut-lift-wait", type=int, default=None,
                   help="experts/replay: the NutAssembly expert lifts this many steps after its close "
                        "command (the first expert: 10); 0 = once the fingers are seen closed")
    p.add_argument("--nut-grip-dz", type=float, default=None,
                   help="experts/replay: the NutAssembly expert's grip height above the handle's centre, "
                        "m (the first expert: -0.005; the others: 0.003)")
    p.add_argument("--nut-dwell", type=int, default=None,
                   help="experts/replay: steps the NutAssembly expert holds still before closing and "
                        "before lowering (the third expert: 4; the others: 0)")
    p.add_argument("--nut-carry", default=None, choices=["closest", "y"],
                   help="experts/replay: where the NutAssembly expert turns the handle while carrying: "
                        "the closest of -x, +y, -y (every expert) or +y / -y only")
    a = p.parse_args(argv)
    task_names, domains = a.tasks.split(","), a.domains.split(",")
    try:
        for t in task_names:
            for d in domains:
                get_domain(t, d)
    except TaskError as e:
        cli.die(str(e))
    if a.episodes <= 0:
        cli.die(f"--episodes must be positive, got {a.episodes}")
    if a.nut_lift_wait is not None and a.nut_lift_wait < 0:
        cli.die(f"--nut-lift-wait must be >= 0, got {a.nut_lift_wait}")
    if a.nut_dwell is not None and a.nut_dwell < 0:
        cli.die(f"--nut-dwell must be >= 0, got {a.nut_dwell}")
    expert = experts.nut_expert(a.nut_expert, grip_dz=a.nut_grip_dz, dwell=a.nut_dwell, carry=a.nut_carry,
                                **({} if a.nut_lift_wait is None else {"lift_wait": a.nut_lift_wait or None}))
    if a.command == "frames":
        save_frames(task_names, a.out or "results/tasks")
        return
    if a.command == "replay":
        rows = check_replay(task_names, domains, a.episodes, a.first_seed, joint_kp=a.joint_kp, expert=expert)
        print("\n".join(f"{r['task']} {r['domain']} kp={a.joint_kp:g}: expert {r['expert_success']}/{r['episodes']}, "
                        f"replayed {r['replay_success']}/{r['expert_success']}, mean joint tracking error "
                        f"{r['mean_tracking_error_rad']:.4f} rad" for r in rows))
        if a.out:
            os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
            cli.write_json(a.out, rows)
        return
    rows = check_experts(task_names, domains, a.episodes, a.first_seed, expert=expert)
    lines = ["| task | domain | success | mean length (successes) | close: height / offset / speed (mm, mm/step) "
             "| seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['domain']} | {r['success']:.2f} "
              f"({round(r['success'] * r['episodes'])}/{r['episodes']}) | "
              f"{r['mean_length_success']:.0f} | "
              + (" / ".join(f"{r['close'][k]:.1f}" for k in ("dz_mm", "dxy_mm", "speed_mm")) if r["close"] else "-")
              + f" | {r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    if a.out:
        os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
        cli.write_json(a.out, rows)


if __name__ == "__main__":
    main()
