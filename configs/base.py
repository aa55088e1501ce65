"""Every configuration field of pa_jax, with its default and what it means.

Experiment configs import this module, call `get_config()` and override fields; a
CPU-sized variant of an experiment is selected with the config argument `cpu`
(`--config configs/dh25_pa.py:cpu`) and produced by `cpu_sized()` here, so no experiment
file is ever copied. Any field can be overridden on the command line:

  python run.py train --config configs/dh25_pa.py:cpu --workdir runs/x --config.train.steps=100

Defaults follow the paper / ../shared/DESIGN.md ("Baseline Mask R-CNN") so that the `dh*` configs
reproduce its settings; `demo.py` and `cpu_sized()` shrink them for a laptop.
"""

import ml_collections

# Where the paper experiments find their data by default: the shared datasets beside the
# checkout. Only the paper configs point there; the demo uses the embedded `data/sample`.
SHARED_DATASETS = "../shared/datasets"


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # One seed for init, data order, sampling and augmentation: runs are reproducible.

  # ----------------------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.source = "data/sample"  # Dataset folder (images/, labels/, index.csv), plain image folder or COCO JSON; several, comma-separated, are read as one.
  c.data.group = ""  # Keep only index.csv rows of this group (comma-separated); '' = all (e.g. 'dh360').
  c.data.train_split = "train"  # index.csv split used for training.
  c.data.eval_split = "test"  # index.csv split used for periodic and final evaluation.
  # Sources without a test split (Kumar, TNBC) need a validation split for model selection:
  # this fraction of each group's train images (organ, slide) becomes split 'val' (seeded).
  c.data.source_repeats = ()  # Times each data.source entry's training images enter an epoch (e.g. (1, 8, 3): oversample small sets); () = once each.
  c.data.val_fraction = 0.0  # 0 = no carving.
  c.data.val_sources = ()  # Folder names of data.source entries to carve (e.g. ('kumar', 'tnbc')); () = all.
  c.data.val_seed = 0  # Seed of the carved split.
  c.data.view = "full"  # Partial view of the training labels: 'full', 'keep' (DH25) or 'crop' (DH25crop).
  c.data.view_fraction = 1.0  # Fraction kept: of the nuclei ('keep') or of the image area ('crop').
  c.data.view_seed = 0  # Seed of the partial view; recorded with the run.
  c.data.canvas_size = 384  # Static training canvas (pixels, multiple of 32): larger images are randomly cropped, smaller ones padded.
  c.data.max_instances = 512  # Static number of ground-truth slots per image (padded with valid=False); more nuclei in a crop is an error.
  c.data.flip_horizontal = True  # Random left-right flips (the paper's only augmentation).
  c.data.flip_vertical = True  # Random up-down flips.
  # Mixed-modality augmentation (the shipped model's recipe, configs/zoo_nuclei.py); all off
  # by default so the paper configs keep the paper's flips only.
  c.data.rotate90 = False  # Random multiples of 90° (with the flips: all 8 symmetries of the square).
  c.data.scale_jitter = (1.0, 1.0)  # Random zoom range (log-uniform) on top of the diameter scale.
  c.data.intensity_jitter = 0.0  # Random contrast/brightness/gamma strength (0 = off; 0.2 = ±20 % contrast, ±0.1 brightness, gamma 0.8–1.25).
  c.data.stain_jitter = 0.0  # RGB images: random scale/shift of the haematoxylin, eosin and DAB optical densities (0 = off; 0.05 typical).
  # Cellpose-style size normalisation: every image is zoomed so that its median nucleus is
  # `diameter` px across (equivalent-circle diameter of the labels). Stored with the run;
  # prediction zooms new images the same way (predict.diameter, given or estimated).
  c.data.diameter = 0.0  # Target median nucleus diameter in px; 0 = images at native scale.
  c.data.normalize = "percentile"  # Intensity scaling to [0, 1]: 'percentile' (0.5/99.5 % per image, robust for 16-bit) or 'dtype' (divide by 255/65535).
  c.data.prefetch = 2  # Batches prepared ahead on a host thread (0 = on demand).
  c.data.workers = 4  # Threads that read, decode, crop and flip the rows of a batch (0 = on the prefetch thread); batches are the same for any count.
  c.data.reader = "folder"  # Training split from 'folder' (data.source, decoded into memory) or 'tfds' (an array_record build read row by row: pods, large sets).
  c.data.tfds_dir = ""  # tfds data dir of the build (data.reader='tfds'), e.g. '~/tensorflow_datasets'.
  c.data.tfds_name = ""  # Build 'dataset/config[/version]' under data.tfds_dir, e.g. 'dsb2018/dh25_seed0'; its view and group must be the config's.

  # ---------------------------------------------------------------------------- model
  c.model = ml_collections.ConfigDict()
  c.model.backbone = "resnext101_64x4d"  # resnet18 | resnet34 | resnet50 | resnet101 | resnext101_64x4d.
  c.model.backbone_width = 64  # Channels of the stem; 64 is the standard network, smaller values make tiny CPU/test nets.
  # 'bn' normalises with imported running statistics (never updated: 1–2 images per device
  # are too few for batch statistics) and trains only its scale/bias.
  c.model.norm = "frozen_bn"  # 'frozen_bn' (pretrained, all fixed), 'group_norm' (from scratch) or 'bn'.
  c.model.mask_padding = True  # Keep the canvas padding out of the network: norm statistics over the image's cells, padding zeroed after every norm, the stem's pool, FPN level and attention, no proposal from an anchor centred in the padding, RoIAlign's maps ending where the smallest canvas would. The output then does not depend on the canvas, to float rounding (pa_jax/models/padding.py), which lets the predictor use canvas buckets. False: the network sees the whole canvas (torchvision's and older runs' behaviour).
  c.model.freeze_at = 2  # Stages (stem=1, res2=2, ...) whose weights get no gradient when pretrained.
  c.model.init = ""  # Start of a new run: '' = random init (or model.pretrained); 'zoo:<name>' or a model file (pa_jax/zoo): fine-tune a shipped model.
  c.model.pretrained = ""  # Path of a torchvision .pth state dict to import (ResNet or Mask R-CNN); '' = random init.
  c.model.fpn_channels = 256  # FPN output channels (P2–P6).
  c.model.num_classes = 2  # Background + nucleus.
  c.model.compute_dtype = "float32"  # 'float32' or 'bfloat16' (the paper-size configs' default, for accelerators: half the activation memory); params, softmaxes, losses and norm statistics stay float32.
  c.model.anchor_sizes = (8, 16, 32, 64, 128)  # Anchor size(s) per FPN level P2..P6 (pixels); a level may list several, e.g. (32, 45.3).
  c.model.anchor_strides = (4, 8, 16, 32, 64)  # Stride of P2..P6.
  c.model.anchor_ratios = (0.5, 1.0, 2.0)  # Height/width ratios of the anchors.

  c.model.rpn = ml_collections.ConfigDict()
  c.model.rpn.fg_iou = 0.7  # Anchors with IoU >= this with a nucleus are positive.
  c.model.rpn.bg_iou = 0.3  # Anchors with max IoU < this are negative; in between: ignored.
  c.model.rpn.batch_per_image = 256  # Anchors sampled per image for the RPN loss.
  c.model.rpn.positive_fraction = 0.5  # At most half of the sampled anchors are positive.
  c.model.rpn.pre_nms_topk_train = 4000  # Per level.
  c.model.rpn.post_nms_topk_train = 2000  # Proposals kept per image after NMS (training).
  c.model.rpn.pre_nms_topk_test = 4000  # Proposals kept per level before NMS (inference).
  c.model.rpn.post_nms_topk_test = 2000  # Proposals kept per image after NMS (inference).
  c.model.rpn.nms_iou = 0.7  # NMS IoU of the proposals.
  c.model.rpn.loss_weight = 1.0  # Weight of the RPN objectness + box losses.

  c.model.roi = ml_collections.ConfigDict()
  c.model.roi.fg_iou = 0.5  # RoIs with IoU >= this are foreground.
  c.model.roi.batch_per_image = 512  # RoIs sampled per image for the box head.
  c.model.roi.positive_fraction = 0.25  # At most a quarter of the sampled RoIs are foreground.
  c.model.roi.box_weights = (10.0, 10.0, 5.0, 5.0)  # Box coder weights (dx, dy, dw, dh).
  c.model.roi.pooler_size = 7  # RoIAlign output of the box head.
  c.model.roi.mask_pooler_size = 14  # RoIAlign output of the mask head (28x28 masks).
  c.model.roi.sampling_ratio = 2  # RoIAlign sampling points per bin and axis.
  c.model.roi.fc_dim = 1024  # Width of the two FC layers of the box head.
  c.model.roi.mask_dim = 256  # Channels of the 4 mask-head convs.
  c.model.roi.score_threshold = 0.05  # Inference: detections below are dropped.
  c.model.roi.nms_iou = 0.5  # Inference NMS.
  c.model.roi.max_detections = 1000  # Inference: nuclei kept per image (dense images need many).
  c.model.roi.mask_batch = 256  # Inference: detections per mask-head call; an image with more valid detections runs further chunks (none are dropped), one with fewer pays for one chunk, not max_detections.
  c.model.roi.mask_train_chunk = 32  # Training: mask-head slots per call; chunks with no sampled positive in any image are skipped, so the head runs on about the positives (torchvision's work), not all batch_per_image * positive_fraction slots. 0: one call on all slots.
  c.model.roi.mask_box_scale = 1.0  # Masks are predicted and trained in the box scaled by this about its centre: a margin, so a box tighter than its nucleus does not cut its mask (1.0 = Mask R-CNN).
  c.model.roi.mask_threshold = 0.5  # Mask probability that counts as inside.
  c.model.roi.box_loss_weight = 1.0  # Weight of the box head losses.
  c.model.roi.mask_loss_weight = 1.0  # Weight of the mask loss.

  # The partial-annotation module (../shared/DESIGN.md "The partial-annotation module (exact)").
  c.model.partial = ml_collections.ConfigDict()
  c.model.partial.enabled = False  # The one switch: False = exactly the baseline Mask R-CNN.
  c.model.partial.attention_levels = ("p2", "p3", "p4", "p5", "p6")  # FPN levels with factorized attention (released code: all).
  c.model.partial.key_channels = 64  # C_k.
  c.model.partial.value_channels = 64  # C_v.
  c.model.partial.center_scale = 0.3  # Centre box = this fraction of the nucleus box (at least 1 px at stride 4).
  c.model.partial.num_pixels = 128  # Pixels sampled per batch for the centerness loss.
  c.model.partial.positive_fraction = 0.5  # At most half of them positive.
  c.model.partial.threshold = 0.95  # sigmoid(centerness) above this seeds a PA box.
  c.model.partial.max_pa_boxes = 512  # Static number of PA boxes per image.
  c.model.partial.anchor = "median"  # 'median' nucleus width/height of the training labels (paper) or 'fixed'.
  c.model.partial.fixed_anchor_size = 32.0  # Window of the 'fixed' anchor (released code).
  c.model.partial.components_backend = "device"  # 'device' (jittable labelling) or 'host' (scikit-image via callback).
  c.model.partial.rpn_ignore_iou = 0.3  # Background anchors with IoU >= this with a PA box are ignored.
  c.model.partial.roi_ignore_iou = 0.5  # Background RoIs with IoU >= this with a PA box are ignored.
  c.model.partial.hard_negatives = False  # Use regions a person rejected (annotation loop) as explicit negatives: RoI candidates, centerness 0, no PA box there.
  c.model.partial.centerness_loss_weight = 1.0  # Weight of L_centerness.
  c.model.partial.centerbox_loss_weight = 1.0  # Weight of L_centerbox.
  # As the paper's released code (docs/model.md "Decisions"); a run saved before a field
  # existed keeps its old value (pa_jax/train/run_config.py, LEGACY_VALUES).
  c.model.partial.centerbox_weights = (10.0, 10.0, 5.0, 5.0)  # Centre-box coder weights.
  c.model.partial.centerbox_beta = 1.0 / 9.0  # Smooth-L1 beta of L_centerbox.
  c.model.partial.connectivity = 4  # PA-box components: 4 (scipy's default) or 8.
  c.model.partial.attention_zero_init = False  # True: attention output projection starts at 0.
  c.model.partial.attention_mask_padding = True  # Key softmax over real pixels, not padding.

  # ---------------------------------------------------------------------------- train
  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000  # Optimiser steps (the paper: 1000 iterations).
  c.train.batch_size = 8  # Global batch (all devices together); must divide by the device count.
  c.train.learning_rate = 0.01  # Peak learning rate (the paper: 0.01, fixed).
  c.train.momentum = 0.9  # SGD momentum.
  c.train.weight_decay = 1e-4  # Applied to weights (kernels) only, not to norms or biases.
  c.train.clip_grad_norm = 10.0  # Global gradient-norm clipping; 0 disables.
  c.train.warmup_steps = 100  # Linear warm-up from 0.
  c.train.schedule = "constant"  # 'constant' (paper), 'cosine' or 'step' (x0.1 at 2/3 and 8/9 of the steps).
  c.train.grad_accum = 1  # Micro-batches accumulated per optimiser step.
  c.train.log_every = 10  # Steps between metric logs (metrics.jsonl, TensorBoard, console).
  c.train.checkpoint_every = 200  # Steps between checkpoints (always one at the end).
  c.train.keep_checkpoints = 3  # Latest checkpoints kept (the best-by-mAP one is kept separately).
  c.train.eval_every = 0  # Steps between periodic evaluations; 0 = only at the end.

  # ----------------------------------------------------------------------- evaluation
  c.eval = ml_collections.ConfigDict()
  c.eval.split = "test"  # Split evaluated by `run.py evaluate --workdir`.
  c.eval.dilate = True  # Dilate every predicted nucleus once with a 3x3 square (the paper's post-process).
  c.eval.max_images = 0  # Evaluate only the first N images (0 = all); for quick periodic evals.

  # ------------------------------------------------------------------------- predict
  c.predict = ml_collections.ConfigDict()
  c.predict.tile_size = 512  # Images larger than this are tiled (pixels, multiple of 32).
  c.predict.tile_overlap = 96  # Overlap between tiles; must exceed the largest nucleus (or clump) side plus the network's context, see docs/tiling.md.
  c.predict.batch_size = 4  # Tiles/images per device call.
  c.predict.canvas_octaves = 2  # k > 0: pad each side to tile_size * 2**(-j/2), j = 0..2k (512, k=2: 128, 192, 256, 384, 512), at most (2k+1)^2 compiled canvases for any mix of sizes; the bucket changes the output only by float rounding when model.mask_padding is on (bench/canvas_buckets.py). 0: pad each side to a multiple of 32 (one compile per distinct size), what runs saved before buckets were the default keep.
  c.predict.diameter = 0.0  # Median nucleus diameter of the input images in px (runs trained with data.diameter): 0 = estimate it from a first pass of the model.
  c.predict.score_threshold = 0.5  # Detections below this score are not drawn into label maps (the 0.05 of model.roi.score_threshold suits ranked AP, not a label map, where every low-score box is a false positive).
  c.predict.mask_overlap = 1.0  # Painting by descending score onto unclaimed pixels, drop a detection with at least this fraction of its mask already claimed (panoptic FPN's overlap_threshold). 1.0 = off: overlaps simply go to the higher score, the paper's protocol (DESIGN.md), kept for every config. 0.5 removed the crescents and slivers that lower-scoring duplicates leave beside a nucleus and raised the shipped model's dh360 test mAP 0.559 -> 0.591 (bench/mask_overlap.py, docs/outlines.md).
  return c


def cpu_sized(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a paper config to something a 2-core CPU trains in well under an hour.

  The method is unchanged (same heads, losses, sampling rules, partial module); only
  capacity, proposal counts and steps shrink: ResNet-18 at half width, GroupNorm (no
  pretrained statistics exist offline), 256-pixel canvases, fewer proposals.
  """
  c.model.backbone = "resnet18"
  c.model.backbone_width = 32
  c.model.norm = "group_norm"
  c.model.freeze_at = 0
  c.model.fpn_channels = 64
  # Two anchor scales per octave: nuclei of 40-60 px fall between the paper's 32 and 64 px
  # anchors, where no anchor reaches IoU 0.7 and only low-quality matches give positives.
  # A short CPU schedule learns much faster with the denser positive signal.
  c.model.anchor_sizes = ((8, 11.3), (16, 22.6), (32, 45.3), (64, 90.5), (128, 181.0))
  c.model.rpn.pre_nms_topk_train = 1000
  c.model.rpn.post_nms_topk_train = 500
  c.model.rpn.pre_nms_topk_test = 1000
  c.model.rpn.post_nms_topk_test = 500
  c.model.rpn.batch_per_image = 256
  c.model.roi.batch_per_image = 256
  c.model.roi.fc_dim = 256
  c.model.roi.mask_dim = 64
  # 64 mask slots per image here, of which a batch fills 12-64 (median 47 in the zoo
  # recipe's log): steps of 16 follow the positives closer than 32 for two more `cond`s.
  # Train step 0.24 -> 0.18 s on the frameworks bench's batches (12-16 positives), 0.22 -> 0.20 s
  # in the zoo recipe (docs/performance.md, 'The mask head's chunk').
  c.model.roi.mask_train_chunk = 16
  c.model.roi.max_detections = 300
  c.model.partial.key_channels = 32
  c.model.partial.value_channels = 32
  c.model.partial.attention_levels = ("p2",)
  c.data.canvas_size = 256
  c.data.max_instances = 256
  c.train.batch_size = 2
  c.train.steps = 1500
  c.train.warmup_steps = 100
  c.train.checkpoint_every = 250
  c.train.log_every = 10
  c.predict.tile_size = 512
  c.predict.batch_size = 1
  return c


def toy_sized(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to the smallest model that still runs every code path (all heads,
  sampling, NMS, the partial module): for tests of the training system and dry runs,
  never for results. 64-pixel canvases, two steps."""
  c.model.backbone_width = 8
  c.model.init = ""  # a toy net cannot start from a shipped model's weights
  c.model.fpn_channels = 16
  c.model.roi.fc_dim = 32
  c.model.roi.mask_dim = 16
  c.model.rpn.pre_nms_topk_train = c.model.rpn.pre_nms_topk_test = 200
  c.model.rpn.post_nms_topk_train = c.model.rpn.post_nms_topk_test = 100
  c.model.rpn.batch_per_image = 64
  c.model.roi.batch_per_image = 64
  c.model.roi.max_detections = 50
  c.model.partial.max_pa_boxes = 32
  c.model.partial.key_channels = c.model.partial.value_channels = 8
  c.data.canvas_size = 64
  c.data.max_instances = 32
  c.train.steps = 2
  c.train.warmup_steps = 1
  c.train.log_every = 1
  return c


def variant(c: ml_collections.ConfigDict, arg: str | None, name: str) -> ml_collections.ConfigDict:
  """Applies the config argument of `configs/<name>.py[:arg]`: '' = as is, 'cpu' = CPU-sized."""
  if arg == "cpu":
    return cpu_sized(c)
  if arg:
    raise ValueError(f"configs/{name}.py: unknown config argument {arg!r} (use ':cpu' or nothing)")
  # Paper size is accelerator size: bf16 convolutions and matmuls (the model keeps params,
  # softmaxes, losses and norm statistics in float32). On a CPU, bf16 is emulated and slow:
  # use ':cpu', or --config.model.compute_dtype=float32 for the full-size net.
  c.model.compute_dtype = "bfloat16"
  return c


def dh360(c: ml_collections.ConfigDict, view: str, fraction: float) -> ml_collections.ConfigDict:
  """Points a config at the paper's DAPI-like group of dsb2018 with a partial view."""
  c.data.source = f"{SHARED_DATASETS}/dsb2018"
  c.data.group = "dh360"
  c.data.view = view
  c.data.view_fraction = fraction
  c.data.canvas_size = 384  # 360x360 images padded to the next multiple of 32.
  return c
