"""Training configs: `configs/train.py:stage=ethd,variant=tiny`.

Argument language (`emotivetalk_jax.config_args`, strict: an unknown key, stage or variant
fails naming the valid ones): comma-separated `key=value` items, plus bare flags:
  stage     encoders | vaid | ethd (stage 0 / 1 / 2) | vae (SVD's VAE as an autoencoder,
            for a domain without a converted VAE: the synthetic demo) | audio (the audio
            encoder learns to hear lips with the lip loss against stage 0's l_v: the demo's
            stand-in for a pretrained wav2vec2; runs between stages 0 and 1) | reader (an
            expression reader trained on the synthetic domain's expression parameters, for
            stage 2's expression term: init.expression_reader) | student (a few-step
            ETHD distilled from init.teacher by consistency distillation, guidance folded in)
  variant   tiny | demo | emotivetalk_512 | emotivetalk_1024
  smoke     a few steps, tiny batch, frequent logs and checkpoints
Every field is overridable with `--config.x=y` (ml_collections config_flags) or
`--config.x=y` through `emotivetalk train` (same syntax, same parser).

Per-variant defaults follow the paper (6.4): stage 2 Adam8bit lr 1e-5, batch 1 per GPU on
8 GPUs; V-AID Adam lr 1e-4 batch 16; bf16 compute for the full-size variants.
"""

import ml_collections

from emotivetalk_jax.config_args import Choice, parse_arg
from emotivetalk_jax.models.ethd_variants import ETHD_VARIANTS
from emotivetalk_jax.models.variants import CPU_SIZED, default_audio_config

_STAGE_DEFAULTS = {
    "encoders": dict(optimizer="adam", lr=1e-4, batch_size=16),
    "vaid": dict(optimizer="adam", lr=1e-4, batch_size=16),
    "ethd": dict(optimizer="adam8bit", lr=1e-5, batch_size=8),
    "vae": dict(optimizer="adam", lr=1e-4, batch_size=8),
    "audio": dict(optimizer="adam", lr=1e-4, batch_size=16),
    "reader": dict(optimizer="adam", lr=1e-3, batch_size=16),
    "student": dict(optimizer="adam8bit", lr=1e-5, batch_size=8),
}


def get_config(arg: str = "") -> ml_collections.ConfigDict:
    args = parse_arg(arg, where="configs/train.py", stage=Choice("ethd", tuple(_STAGE_DEFAULTS)),
                     variant=Choice("tiny", tuple(ETHD_VARIANTS)), smoke=False)
    stage, variant = args["stage"], args["variant"]
    tiny = variant in CPU_SIZED
    d = _STAGE_DEFAULTS[stage]

    c = ml_collections.ConfigDict()
    c.stage = stage
    c.variant = variant
    c.vaid_variant = ""  # V-AID / face-encoder variant for stage 2 ("" = same as variant)
    c.seed = 0
    c.total_steps = 100_000
    c.batch_size = 2 if tiny else d["batch_size"]  # global batch (all processes)
    c.frames = 0  # 0 = the stage's default (stage 0: 1; V-AID: Di-CTE train_frames; ETHD: train.frames)
    c.image_size = 0  # 0 = the stage's default
    # Stage 0: face encoders that read landmark-aligned faces (`FaceEncoderConfig.aligned`, issue 30:
    # head motion out of l_v / e_v). Later stages take it from their init.face_encoders, not from here.
    c.face_aligned = False
    c.compute_dtype = "float32" if tiny else "bfloat16"
    c.remat = "none" if tiny else "blocks"  # none | blocks | layers | comma-separated class names
    c.remat_policy = ""  # a jax.checkpoint_policies name; "" saves nothing
    # auto | xla | cudnn | pallas: attention kernels (models/attention.py; auto = cuDNN flash on
    # NVIDIA GPUs, the Pallas flash kernel on TPU, XLA elsewhere); `emotivetalk train --attention`.
    c.attention = "auto"
    c.e_a_steps = 0  # DDIM steps for V-AID's e_a in stage 2 (0 = Di-CTE's sample_steps)
    c.sample_sigma = 1.0  # noise level of the stage-2 sample videos
    c.vae_kl = 1e-6  # stage vae: weight of the KL term next to the L1 reconstruction
    c.vae_sample = False  # stage vae: decode a posterior sample (True) or the mean (stage 2 encodes the mean)
    # stage vae: per-pixel L1 weight 1 + (vae_face_weight - 1) [face box] + (vae_lip_weight - 1)
    # [lip box] (1, 1 = SVD's plain L1; additive, so face 8 and lip 4 weigh the lip box 11), and an
    # L1 on image gradients added at vae_edge_weight (0 = none). Not in the paper; for the demo's
    # small VAE, which otherwise blurs the expression's thin lines (brows, lids, the lip corners).
    # The lip weight did not move the corners' read-back error in 750 decoder steps (stop 26).
    c.vae_face_weight = 1.0
    c.vae_lip_weight = 1.0
    # stage vae: weight of the frozen expression encoder's relative error on the reconstruction
    # (0 = none; the encoder of init.face_encoders; needs data.reference_neutral=1). Not in the paper: the
    # demo VAE's round trip flattens the mouth corners by about 0.6 (benchmarks/vae_readback.py,
    # by_emotion), which the weighted L1 did not move.
    c.vae_expression_weight = 0.0
    c.vae_edge_weight = 0.0
    c.vae_train = "all"  # stage vae: "all", or "decoder" (encoder frozen: a fine-tune that keeps stage 2's latents)

    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))  # a tuple: config_flags overrides tuples, not lists
    # Sharding as data (emotivetalk_jax.sharding; maxdiffusion's logical_axis_rules). param_rules:
    # regex on a parameter's dotted NNX path -> logical axes of its TRAILING dims (first match
    # wins); the VAE (stage vae's model, the frozen VAE of stage 2) reads its own vae_param_rules.
    # mesh_rules: logical axis -> mesh axes (a name, a tuple of names, or None); `batch` is the
    # activations' axis. tensor_parallel=False maps mlp / heads to None. Arrays with fewer than
    # min_size elements are replicated.
    c.sharding = ml_collections.ConfigDict(dict(
        min_size=2**12, tensor_parallel=True,
        param_rules=(
            (r"(^|\.)(to_q|to_k|to_v)\.kernel$", ("embed", "heads")),
            (r"(^|\.)to_out\.0\.kernel$", ("heads", "embed")),
            (r"(^|\.)net\.0\.proj\.kernel$", ("embed", "mlp")),  # GEGLU in
            (r"(^|\.)net\.2\.kernel$", ("mlp", "embed")),  # FF out
            (r"(^|\.)kernel$", ("embed", "mlp")),  # linears (in, out) and convs (..., in, out)
            (r".*", ()),  # everything else replicated
        ),
        vae_param_rules=(  # convs and the mid-block attention; the VAE has no feed-forward layers
            (r"(^|\.)(to_q|to_k|to_v)\.kernel$", ("embed", "heads")),
            (r"(^|\.)to_out\.0\.kernel$", ("heads", "embed")),
            (r"(^|\.)kernel$", ("embed", "mlp")),
            (r".*", ()),
        ),
        mesh_rules=dict(batch=("data", "fsdp"), embed="fsdp", mlp="tensor", heads="tensor"),
    ))

    c.optim = ml_collections.ConfigDict(dict(
        name=d["optimizer"], lr=d["lr"], schedule="constant", warmup_steps=0 if tiny else 500, end_lr_factor=0.0,
        total_steps=c.get_ref("total_steps"), b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2, grad_clip=1.0,
        block_size=256, min_8bit_size=1024,
    ))

    c.data = ml_collections.ConfigDict(dict(
        source="synthetic", path="", num_clips=64 if tiny else 10_000, data_seed=0, worker_count=0, threads=2,
        prefetch=2,
        # Probability that a training example's reference is the clip's neutral, closed-mouth
        # portrait (what users and the bench give) instead of another frame of the clip. The paper
        # does not say how it picks x_ref; with another frame of the same clip, emotion (constant
        # within a clip) is already in the reference and the model learns to copy it.
        reference_neutral=0.0,
        # Synthetic head motion (1 = the domain's default, +-1.2% shift, +-2 degrees roll); no input
        # predicts it, so it is noise in stage 2's target.
        head_motion=1.0,
        # Synthetic heads that move as much as a 64 px frame shows, each clip at its own motion
        # level (`data.synthetic.MOVING_HEADS`; issue 30); off: the domain the demo was trained on.
        moving_heads=False,
    ))
    # Exponential moving average of the trained parameters (stage 2), kept in the checkpoint and
    # exported by `export-bundle`; 0 = off. Not in the paper.
    c.ema_decay = 0.95 if stage == "student" else 0.0  # student: the consistency target (LCM's 0.95)
    # Stage 2: the x0 error inside the reference's lip box weighs this much more than elsewhere
    # (1 = eq. 11 as written). The mouth is a few percent of the frame; not in the paper.
    c.lip_loss_weight = 1.0
    # Stage 2: the same for the rest of the face box (brows, eyes, cheeks), where the expression
    # shows: with a neutral reference the expression is a small share of the frame's change, and
    # an unweighted loss learns the lips and the head long before it (not in the paper).
    c.face_loss_weight = 1.0
    # Stage 2: weight of an expression-consistency term added to eq. 11 (0 = off, the paper). The
    # denoised clip D is decoded by the frozen VAE and read by the frozen expression encoder, and
    # its e is pulled to the ground truth's e_v, as a relative error (0 = the clip's expression,
    # 1 = the neutral portrait's; `ethd_loss.expression_consistency`). The x0 error alone weighs
    # the expression by its share of the latent, under 1% in the synthetic demo, and its
    # generated expressions came out at a third to a half of the truth's amplitude (inner brows
    # about none). Costs a VAE decode and an encoder pass, forward and backward, per step.
    # With init.expression_reader (a stage-`reader` workdir) the term reads D and the ground truth
    # through that reader instead: the expression encoder does not see the mouth corners (stop 26).
    c.expression_loss_weight = 0.0
    # Stage 2: the learning rate of the parameters ETHD adds to SVD's UNet (lip and expression
    # projections, EDI, temporal expression attention; `models.ethd.NEW_KEYS`) is this many times
    # the rest's. The EDI and temporal expression outputs start at zero, and with one rate the
    # demo's e_dri had moved x0 by 6% of the expression after 2528 steps (gate/expr_transfer);
    # 1 = the paper's single rate.
    c.new_params_lr_scale = 1.0
    # Stage 2: compute the frozen models' frame-wise outputs (VAE latents, e_v, l_a) once per
    # training clip, keep them in the workdir (frozen_outputs.npz, keyed by the frozen parameters)
    # and slice them into each batch, instead of re-encoding every frame every step. Off by
    # default: it holds every clip's outputs in host memory (a full-size dataset's latents do not
    # fit) and pays an up-front pass over the data; the synthetic demo, whose step is dominated by
    # those encoders, turns it on. The reference latent, e_ref and e_a stay computed per step.
    c.frozen_cache = False
    # Stage 2, beyond the paper (issue 30): the motion knob. Off: SVD's motion bucket in
    # added_time_ids is the variant's constant (127) for every clip. On: each clip gets its own,
    # 127 x its pose motion (`data.pose.motion_level`) / `motion_typical`, clipped to [0, 255],
    # and the bundle records the scale so `generate --motion LEVEL` can ask for a level (1 = the
    # data's typical motion, 0 = still). motion_typical 0: the median over the first 64 training
    # clips, measured when the stage is built (and again, identically, by export-bundle).
    c.motion_conditioning = False
    c.motion_typical = 0.0
    # Stage 2, beyond the paper (issue 30): an explicit per-frame head-pose condition (ETHD's
    # zero-initialised pose guider, `models.pose_guider`; its ETHDConfig.pose). Dropped (no pose
    # given) for a `pose_drop` share of the clips, so the backbone also runs without a driving pose.
    c.pose_condition = False
    c.pose_drop = 0.3
    # Held-out synthetic clips (fit and score, each) of the learning gates (`eval.probes`) logged at
    # every checkpoint of the encoders / audio / vaid / ethd stages; 0 = off. On for the demo (the
    # synthetic recipe); opt-in elsewhere (the probes read synthetic clips, not a prepared dataset).
    c.gate_clips = 16 if variant == "demo" else 0
    # Batches read, at a run's step 0, to set fixed data statistics (stage 1 with a Di-CTE that
    # standardises e_v: its per-dimension mean and std); those batches train nothing.
    c.calibrate_batches = 8
    # Stage 1's trained parts: "all" (the lip projector, Di-CTE and CLUB's q) or "dicte" (Di-CTE and
    # q only, starting from init.vaid): retrains the expression model of a finished stage 1
    # without touching l_a, which a stage-2 run may already have learned on
    # (`export-bundle --vaid` then takes its Di-CTE).
    c.vaid_train = "all"
    # stage student (consistency distillation, `diffusion/consistency.py`)
    c.teacher_lip_scale = -1.0  # guidance folded in; -1: the scales of the bundle init.teacher belongs to
    c.teacher_expr_scale = -1.0
    c.student_grid = 32  # Karras sigmas of the distillation schedule
    c.consistency_huber = 0.0  # pseudo-Huber c of the consistency loss (0: squared error)
    c.consistency_anchor = 0.0  # weight of the student's D against the teacher's guided D (0: pure consistency)
    c.teacher_steps = 8  # the teacher's DDIM steps in the student's gates

    c.init = ml_collections.ConfigDict(dict(
        svd="",  # diffusers SVD folder or `emotivetalk convert svd` output (ETHD + VAE)
        audio="",  # Hugging Face wav2vec2 folder or `emotivetalk convert audio` output
        face_encoders="",  # stage-0 workdir
        vaid="",  # stage-1 workdir
        vae="",  # stage-`vae` workdir (takes precedence over init.svd's VAE)
        ethd="",  # stage 2 starts from these ETHD weights (a stage-2 workdir; takes precedence over init.svd)
        expression_reader="",  # stage-`reader` workdir: what stage 2's expression term reads (see there)
        teacher="",  # stage student: the ETHD it distils (a stage-2 workdir or a bundle's ethd/ folder)
    ))
    # Every init path above except svd may also be a native component folder (an export, or a
    # part of a bundle: `--config.init.vae=emotivetalk_jax/assets/demo/vae` and so on), so a run
    # can fine-tune the shipped demo without the demo's training workdirs.
    c.audio_encoder = ml_collections.ConfigDict(dict(default_audio_config(variant)))

    c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, async_save=True, resume=True))
    c.log_every = 10
    c.sample_every = 0 if tiny else 5000  # stage 2 sample videos (0 = off)
    c.max_bad_steps = 10  # non-finite updates in a row before training stops
    c.progress = True
    # XLA options for the step's ahead-of-time compile, e.g. {"xla_backend_optimization_level": 0}
    # (CPU tests: compiles several times faster, runs slower).
    c.compiler_options = ml_collections.ConfigDict()

    if args["smoke"]:
        c.total_steps = 4
        c.log_every = 1
        c.checkpoint.every = 2
    return c
