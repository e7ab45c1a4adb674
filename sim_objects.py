"""MJCF objects for the tasks robosuite lacks (paper Sec. 4: MugCleanup, MugHang): a mug, a
drawer cabinet and a mug tree, written as boxes and cylinders so collision geometry is exact, with
sizes as parameters (the physics domain gaps resize them). Also the robosuite scene that holds them.
Used by tasks.py; the scripted experts read the size constants.
"""
import hashlib
import os
import tempfile

import numpy as np


# ----------------------------------------------------------------------------------------------
# MJCF objects written here (robosuite has no mug, drawer or hook): boxes and cylinders only, so
# collision geometry is exact and contacts behave
# ----------------------------------------------------------------------------------------------
def _xml_object(name: str, body: str, half_height: float, radius: float) -> str:
    """Write a robosuite-style object XML (body "object" + bottom/top/radius sites) to a cache
    folder and return its path."""
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
        centre = ((r - w / 2) * np.cos(a), (r - w / 2) * np.sin(a), w / 2)
        parts.append(_geom("box", (w / 2, half_chord, h - w / 2), centre, c,
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
    W, D, H = DRAWER["width"] / 2, DRAWER["depth"] / 2, DRAWER["height"] / 2
    t, wl = DRAWER["travel"], DRAWER["wall"] / 2
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
    slide = (f'<joint name="slide" type="slide" axis="1 0 0" range="{-t:.3f} 0" damping="{slide_damping}" '
             'frictionloss="0.3" limited="true"/>')
    body = "\n".join(cab) + f"""
        <body name="drawer" pos="0 0 {wl + 0.002:.4f}">
          {slide}
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


def register_scene_env():
    """A robosuite ManipulationEnv with a table, the Panda and the MJCF objects a task names.
    Defined lazily (robosuite registers environment classes when they are created)."""
    import robosuite  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    if "CotrainScene" in robosuite.ALL_ENVIRONMENTS:
        return
    from robosuite.environments.manipulation.manipulation_env import ManipulationEnv  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    from robosuite.models.arenas import TableArena  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    from robosuite.models.objects import MujocoXMLObject  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)
    from robosuite.models.tasks import ManipulationTask  # noqa: PLC0415 (slow: robosuite (~2 s), imported once an env is built)

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


