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

TASK_NAMES = ("NutAssembly",)
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
    object_rgba: tuple = None       # tint of the task objects' materials
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
DOMAINS = {
    "NutAssembly": {
        "source": Domain("source"),
        "target_visual": Domain("target_visual", visual=_NUT_VISUAL),
        "target_physics": Domain("target_physics", physics=_NUT_PHYSICS),
        "target_visual_physics": Domain("target_visual_physics", visual=_NUT_VISUAL, physics=_NUT_PHYSICS),
    },
}


def get_domain(task: str, domain: str) -> Domain:
    if task not in TASK_NAMES:
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


def controller_config(control: str) -> dict:
    """robosuite composite controller config for "osc" (OSC_POSE delta, 7-D) or "joint"
    (JOINT_POSITION absolute, limits widened, 7 joints + gripper = 8-D)."""
    from robosuite.controllers import load_composite_controller_config, load_part_controller_config
    from robosuite.controllers.composite.composite_controller_factory import refactor_composite_controller_config
    if control == "osc":
        return load_composite_controller_config(controller="BASIC", robot="Panda")
    if control == "joint":
        part = load_part_controller_config(default_controller="JOINT_POSITION")
        part.update(input_type="absolute", input_max=10, input_min=-10, output_max=10, output_min=-10,
                    kp=JOINT_KP)
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
    object_name = None      # the manipulated object (robosuite object name)
    fixture_body = None     # body the object goes to

    def __init__(self, task, domain="source", control="osc", cameras=(), image_size=84):
        import robosuite as suite
        _quiet_robosuite()
        self.task, self.domain, self.control = task, get_domain(task, domain), control
        self.cameras = tuple(cameras)
        self.image_size = image_size
        self.env = suite.make(
            self.robosuite_env, robots="Panda", controller_configs=controller_config(control),
            has_renderer=False, has_offscreen_renderer=bool(self.cameras),
            use_camera_obs=bool(self.cameras), camera_names=list(self.cameras) or "agentview",
            camera_heights=image_size, camera_widths=image_size, control_freq=CONTROL_FREQ,
            horizon=10_000, ignore_done=True, hard_reset=False, lite_physics=True,
            reward_shaping=False, initialization_noise=None)
        self.sim = self.env.sim
        self._defaults = self._read_defaults()
        self._apply_domain()
        self.t = 0
        self._gripper = -1.0

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
            self._tint(obj_geoms + self._fixture_geoms(), v.object_rgba)
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
        m = self.sim.model
        body = m.body_name2id(self.fixture_body)
        return [g for g in range(m.ngeom) if m.geom_bodyid[g] == body and m.geom_group[g] == 1]

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
        robot = self.env.robots[0]
        return bool(self.env._check_grasp(robot.gripper, self.env.nuts[self.env.nut_id].contact_geoms)) \
            if hasattr(self.env, "nuts") else False


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

    def success(self) -> bool:
        return bool(self.env._check_success())

    def subtask_signals(self) -> dict:
        return {"grasp": self.grasping(), "insert": self.success()}


TASK_CLASSES = {"NutAssembly": NutAssembly}


def make_env(task: str, domain: str = "source", control: str = "osc", cameras=(), image_size: int = 84) -> TaskEnv:
    get_domain(task, domain)
    if control not in ("osc", "joint"):
        raise TaskError(f"unknown control mode {control!r}; choose osc or joint")
    return TASK_CLASSES[task](task, domain, control, cameras, image_size)


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


EXPERTS = {"NutAssembly": NutAssemblyExpert}


def make_expert(env: TaskEnv, seed: int):
    return EXPERTS[env.task](env, seed)


# ----------------------------------------------------------------------------------------------
# episodes: run the expert, record, replay joint targets
# ----------------------------------------------------------------------------------------------
def run_expert_episode(env: TaskEnv, seed: int, record: bool = True, settle: int = 5) -> dict:
    """One expert episode from the initial state of `seed`. Stops `settle` steps after success or
    at the horizon. Returns success, length, and (record=True) per-step arrays: obs_<key>,
    actions (controller space), joint_actions (joint targets + gripper), states, subtask signals."""
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
    out = {"success": done_at is not None, "length": env.t, "seed": seed}
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
    p.add_argument("command", choices=["experts", "frames"])
    p.add_argument("--tasks", default=",".join(TASK_NAMES), help="comma-separated task names")
    p.add_argument("--domains", default=",".join(DOMAIN_NAMES), help="comma-separated domain names")
    p.add_argument("--episodes", type=int, default=50, help="seeded episodes per task x domain")
    p.add_argument("--out", default=None, help="experts: JSON file; frames: folder (default results/tasks)")
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
