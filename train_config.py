"""The training settings, one source for 02_train.py and study.py: 02_train's arguments (`Args`,
every default visible here), the profiles that override them (`PROFILES`), the run folder's name
(`run_name`), the data files and keys a run reads (`data_paths`, `data_keys`) and the settings a
resume may change. study.py names, prices and checks its runs with these, through 02_train.py's
own argument parser (cli.parse_args)."""
import os
from dataclasses import dataclass, fields

import common
import methods
from cli import dataset_names
from common import arg
from diffusion_policy import ModelConfig
from methods import METHODS

MODEL = ModelConfig()  # the paper's network settings: the defaults of the model flags below


@dataclass
class Args(methods.MethodArgs):  # + the methods' settings (methods.MethodArgs)
    profile: str = "cpu"
    method: str = arg("cotrain", "co-training method (a row of methods.METHODS): " + ", ".join(METHODS))
    ratio: str = arg("auto", "mixing ratio w = P(target sample): a number in [0, 1], natural "
                             "(N/(N+M)) or auto (middle of the guideline's range, App. D.5)")
    # data
    task: str = arg("NutAssembly", "task: NutAssembly, MugCleanup, MugHang")
    target_domain: str = arg("target_visual_physics", "target ('real') domain (Sec. 4: visual-physics)")
    data_root: str = arg("data", "folder of the dataset set written by 01_generate_data.py")
    target_name: str = arg(dataset_names("cpu")["target_name"], "target dataset file name under "
                           "<root>/<task>/<target domain>/ (01_generate_data.py's set: cli.DATASET_SETS)")
    source_name: str = arg(dataset_names("cpu")["source_name"], "source dataset file name under <root>/<task>/source/")
    target_data: str = arg("", "explicit target HDF5 (overrides the three options above)")
    source_data: str = arg("", "explicit source HDF5")
    images: bool = arg(False, "train on camera images (reads the <name><image suffix>.hdf5 files)")
    image_suffix: str = arg("_img", "file name suffix of the image copies (01_generate_data.py --image-suffix)")
    image_keys: list = arg(["agentview_image", "robot0_eye_in_hand_image"], "cameras (App. C: 2)")
    obs_keys: list = arg([], "low-dim keys (stored, or derived: <pos key>_rel, <name>_rot6d); "
                             "empty = the --obs-set's keys (images: proprioception only)")
    obs_set: str = arg("world", "low-dim set without images: world (proprioception + object poses), "
                                "eef (+ gripper pose), rel (object positions relative to the gripper); "
                                "see common.lowdim_keys_of")
    max_demos: int = arg(0, "use only the first K demos of each file (0 = all)")
    action_space: str = arg("abs", "abs: absolute joint targets + gripper (App. C); rel: joint targets "
                                   "minus the current joint positions (gripper absolute), added back at "
                                   "execution; osc: the expert's OSC_POSE delta commands (7-D), executed "
                                   "by robosuite's OSC controller")
    init_from: str = arg("", "start from this checkpoint's EMA weights (App. D.4 fine-tuning)")
    # policy (Chi et al. Diffusion Policy; App. C, D.3): defaults from diffusion_policy.ModelConfig
    arch: str = arg(MODEL.arch, "denoiser: encdec (transformer enc-dec, the paper's), dec, unet, mlp "
                              "(residual MLP; d_model = width, n_layers = blocks)")
    n_obs: int = arg(MODEL.n_obs, "observation history length")
    horizon: int = arg(MODEL.horizon, "predicted action chunk length")
    n_action: int = arg(MODEL.n_action, "actions executed per chunk at test time")
    d_feat: int = arg(MODEL.d_feat, "observation feature width (trunk output)")
    d_model: int = arg(MODEL.d_model, "transformer width")
    n_heads: int = arg(MODEL.n_heads, "attention heads")
    n_layers: int = arg(MODEL.n_layers, "transformer decoder layers")
    n_cond_layers: int = arg(MODEL.n_cond_layers, "transformer encoder layers over the observation tokens (encdec)")
    dropout: float = arg(MODEL.dropout, "transformer dropout")
    unet_dims: list = arg(MODEL.unet_dims, "U-Net channel widths")
    resnet_width: int = arg(MODEL.resnet_width, "ResNet18 base width (64 = the original)")
    vision_dim: int = arg(MODEL.vision_dim, "per-camera feature width after the vision stem")
    vision_pool: str = arg(MODEL.vision_pool, "pooling of the ResNet's last feature map: avg (global average) | "
                                  "spatial_softmax (32 keypoints, robomimic / Diffusion Policy)")
    crop: int = arg(MODEL.crop, "random crop size in training, center crop at test (0 = none)")
    T: int = arg(MODEL.T, "diffusion steps in training (DDPM)")
    sample_steps: int = arg(MODEL.sample_steps, "DDIM steps at inference (stored for eval)")
    # optimization
    steps: int = arg(100000, "training steps")
    batch_size: int = arg(256, "batch size (App. C: 256); with torchrun, split across processes")
    lr: float = arg(1e-4, "AdamW peak learning rate")
    weight_decay: float = arg(1e-3, "AdamW weight decay")
    warmup: int = arg(1000, "linear learning-rate warm-up steps, then cosine decay to 0")
    grad_clip: float = arg(1.0, "gradient norm clip (0 = off)")
    ema_power: float = arg(0.75, "EMA warm-up power (Diffusion Policy)")
    ema_max: float = arg(0.9999, "EMA maximum decay")
    seed: int = arg(0, "seed of the model init, batch sampler and noise")
    compile: bool = arg(False, "training only: torch.compile the encoder and denoiser and run the vision "
                               "stem channels-last (bench/bench_images.py --compile)")
    # running
    out: str = arg("", "run folder (default runs/train/<task>_<domain>_<method>_r<w>_<arch>_s<seed>)")
    resume: bool = arg(False, "continue from <out>/ckpt.pt if it exists")
    overwrite: bool = arg(False, "start over in an existing run folder")
    save_every: int = arg(5000, "steps between checkpoints (ckpt.pt)")
    snapshot_every: int = arg(0, "steps between EMA-only snapshots ckpt_<step>.pt (0 = none)")
    log_every: int = arg(100, "steps between metrics.jsonl lines")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda")
    verbose: bool = arg(False, "print every metrics line")


# The profiles: every value that differs from the defaults above, in one table.
PROFILES = {
    # GPU, the paper's setting: 2 cameras 84x84 (crop 76), history 2, batch 256. The paper does
    # not state its step budget; 100k steps is our choice (Diffusion Policy trains for ~3000 epochs).
    "paper": dict(images=True, **dataset_names("paper")),
    # This 2-core CPU (RESULTS "A CPU recipe"): the cpu_v1 transformer, with low-dim observations
    # that hold the gripper pose and object positions relative to the gripper, joint targets
    # predicted relative to the current joint positions, and 20k steps (~42 min alone, inside
    # the 45 min a run may take here; 15k left sim_only's loss still falling).
    "cpu": dict(images=False, obs_set="rel", action_space="rel", d_feat=128, d_model=128, n_layers=2,
                n_cond_layers=1, dropout=0.0, unet_dims=[64, 128, 256], steps=20000, batch_size=128,
                lr=3e-4, warmup=500, disc_warmup=2000, grl_ramp=2000, save_every=1000,
                snapshot_every=5000, log_every=100),
    # The earlier cpu recipe (RESULTS "Training"), kept for comparison (bench/bench_train.py):
    # world-frame object poses, a 1+2-layer width-128 transformer, 15k steps at batch 128.
    "cpu_v1": dict(images=False, d_feat=128, d_model=128, n_layers=2, n_cond_layers=1, dropout=0.0,
                   unet_dims=[64, 128, 256], steps=15000, batch_size=128, lr=3e-4, warmup=500,
                   disc_warmup=2000, save_every=1000, snapshot_every=5000, log_every=100),
    # Image policies on this CPU (RESULTS "The instrument"; bench/bench_images.py): the cpu
    # recipe's transformer on proprioception + one agentview camera at 64x64 (crop 58, 90 %), a
    # width-8 ResNet18-GN (a camera costs ~30 ms per env step whatever its size, a second one
    # doubles both rendering and training), batch 64, 40k steps (20k: sim_only 0.12 in its source
    # domain, 40k: 0.45), compiled (1.26-1.53x, the same loss curve: bench/bench_compile_loss.py).
    "cpu_img": dict(images=True, image_suffix="_img64", image_keys=["agentview_image"], resnet_width=8,
                    vision_dim=64, crop=58, action_space="rel", d_feat=128, d_model=128,
                    n_layers=2, n_cond_layers=1, dropout=0.0, unet_dims=[64, 128, 256], steps=40000,
                    batch_size=64, lr=3e-4, warmup=500, disc_warmup=2000, grl_ramp=2000, compile=True,
                    save_every=1000, snapshot_every=5000, log_every=100),
    # Seconds, for tests.
    "smoke": dict(images=False, d_feat=32, d_model=32, n_heads=2, n_layers=1, n_cond_layers=1,
                  dropout=0.0, horizon=8, n_action=4, unet_dims=[16, 32], resnet_width=8,
                  vision_dim=16, crop=0, steps=20, batch_size=16, lr=1e-3, warmup=5,
                  disc_warmup=5, disc_hidden=32, save_every=10, snapshot_every=10, log_every=5,
                  **dataset_names("smoke")),
}
# Settings that may change on --resume without changing the result.
RESUME_FREE = {"resume", "overwrite", "save_every", "snapshot_every", "log_every", "verbose", "device"}
# Settings that define the network (a checkpoint for --init-from must match them).
MODEL_KEYS = ModelConfig.NETWORK
# The model settings set by a flag of the same name (the rest come from the data and the method).
MODEL_FLAGS = tuple(f.name for f in fields(ModelConfig) if f.name in {x.name for x in fields(Args)}
                    and f.name not in ("image_keys", "crop"))  # cameras and crop: only with images


def run_name(a: Args, w: float) -> str:
    images = a.image_suffix if a.images else ""  # image policies: e.g. ..._target_visual_img64_cotrain_...
    return f"{a.task}_{a.target_domain}{images}_{a.method}_r{w:.3g}_{a.arch}_s{a.seed}"


def data_paths(a: Args) -> tuple:
    """The target and source dataset files a run reads."""
    suffix = a.image_suffix if a.images else ""
    tgt = a.target_data or os.path.join(a.data_root, a.task, a.target_domain, f"{a.target_name}{suffix}.hdf5")
    src = a.source_data or os.path.join(a.data_root, a.task, "source", f"{a.source_name}{suffix}.hdf5")
    return tgt, src


def data_keys(a: Args, target_path: str) -> tuple:
    """The observation keys (low-dim, images) and the action key a run loads from its datasets."""
    lowdim = a.obs_keys or (common.PROPRIO_KEYS if a.images else common.lowdim_keys_of(target_path, a.obs_set))
    return list(lowdim), list(a.image_keys if a.images else []), common.ACTION_SPACES[a.action_space][0]
