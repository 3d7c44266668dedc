"""The bad inputs test_cli.py gives train.py and tune.py: {case: (flags,
a part of the one line that must refuse them)}.  `{data}` in a flag is
the folder of damaged data files that test_cli.py's `bad_data` makes."""

BAD_INPUTS = {
    "unknown dataset": (["--dataset=imagenet"], "valid: digits, mnist"),
    "unknown rule": (["--algorithm=hebb"], "valid: bp, fa, kp"),
    "unknown activation": (["--activation=gelu"], "valid: tanh, relu"),
    "unknown arch token": (["--arch=256-x7"], "valid tokens"),
    "malformed arch": (["--arch=256--256"], "valid tokens"),
    "conv after dense": (["--arch=256-32C5"], "conv blocks come first"),
    "pool without conv": (["--arch=P2-256"], "must follow a conv"),
    "unknown block option": (["--arch=128:d2"], "valid options: :bn"),
    "image shrinks to nothing": (["--arch=8C5v-8C5v"], "would make 0×0"),
    "missing data file": (["--dataset=mnist", "--data_dir={empty}"],
                          "mnist.npz' not found"),
    "drtp reconstruction": (["--algorithm=drtp",
                             "--problem_type=reconstruction"],
                            "valid: bp, fa, kp, usf, brsf, frsf, dfa"),
    "examples_frac zero": (["--examples_frac=0"], "must be in (0, 1]"),
    "examples_frac above one": (["--examples_frac=1.5"], "must be in (0, 1]"),
    "negative epochs": (["--epochs=-1"], "must be positive"),
    "negative batch size": (["--batch_size=-8"], "must be positive"),
    "negative learning rate": (["--lr=-0.1"], "must be positive"),
    "not a number": (["--lr=fast"], "not a valid float"),
    "unknown flag": (["--learning_rate=1"], "Unknown command line flag"),
    "list in a single run": (["--lr=1e-3,1e-2"], "single run takes one"),
    # Damaged data files (written by the `bad_data` fixture), named.
    "truncated mnist.npz": (["--dataset=mnist", "--data_dir={data}/cut_npz"],
                            "cut_npz/mnist.npz' is unusable (not a complete "
                            ".npz archive"),
    "text mnist.npz": (["--dataset=mnist", "--data_dir={data}/text_npz"],
                       "text_npz/mnist.npz' is unusable"),
    "mnist.npz without x_train": (["--dataset=mnist",
                                   "--data_dir={data}/no_x_train"],
                                  "no array x_train; Keras' layout has "
                                  "x_train, y_train, x_test, y_test"),
    "mnist.npz of mismatched arrays": (["--dataset=mnist",
                                        "--data_dir={data}/mismatched"],
                                       "(5, 28, 28) images and (4,) labels "
                                       "do not match"),
    "truncated fmnist gzip": (["--dataset=fmnist",
                               "--data_dir={data}/cut_gz"],
                              "fashion-mnist/train-images-idx3-ubyte.gz' "
                              "is unusable (not a complete gzip file"),
    "fmnist file not gzip": (["--dataset=fmnist", "--data_dir={data}/raw"],
                             "fashion-mnist/train-labels-idx1-ubyte.gz' is "
                             "unusable (not a complete gzip file: "
                             "BadGzipFile"),
    "fmnist idx cut short": (["--dataset=fmnist",
                              "--data_dir={data}/cut_idx"],
                             "t10k-labels-idx1-ubyte.gz' is unusable (9999 "
                             "bytes of data for a [10000] array: truncated"),
    "fmnist file missing": (["--dataset=fmnist",
                             "--data_dir={data}/three_of_four"],
                            "three_of_four/fashion-mnist/t10k-labels-idx1-"
                            "ubyte.gz' not found"),
    "fmnist folder missing": (["--dataset=fmnist", "--data_dir={empty}"],
                              "empty/fashion-mnist/train-images-idx3-ubyte"
                              ".gz' not found"),
    "truncated cifar10 batch": (["--dataset=cifar10",
                                 "--data_dir={data}/cut_pickle"],
                                "cifar-10-batches-py/data_batch_1' is "
                                "unusable (not a CIFAR batch"),
    "cifar10 batch without labels": (["--dataset=cifar10",
                                      "--data_dir={data}/no_labels"],
                                     "test_batch' is unusable (not a CIFAR "
                                     "batch (a pickled dict with b'data' and "
                                     "b'labels')"),
    "corrupt cifar100 tarball": (["--dataset=cifar100",
                                  "--data_dir={data}/bad_tar"],
                                 "cifar-100-python.tar.gz' is unusable (not "
                                 "a complete .tar.gz"),
    # Numbers out of range.
    "infinite learning rate": (["--lr=inf"], "--lr=inf: must be a finite "
                               "number"),
    "overflowing learning rate": (["--lr=1e400"], "--lr=inf: must be a "
                                  "finite number"),
    "nan learning rate": (["--lr=nan"], "--lr=nan: must be a finite number"),
    "infinite weight decay": (["--weight_decay=inf"], "must be a finite"),
    "infinite feedback lr": (["--fb_lr=-inf"], "must be a finite"),
    "seed of 2**32": (["--seed=4294967296"], "--seed=4294967296: must be in "
                      "[0, 4294967295]"),
    "negative seed": (["--seed=-1"], "must be in [0, 4294967295]"),
    "seeds past 2**32": (["--seed=4294967295", "--executions_per_trial=2"],
                         "runs seed 4294967296 (valid seeds: 0 to "
                         "4294967295)"),
    "dropout of one": (["--dropout=1"], "must be in [0, 1)"),
    "no executions": (["--executions_per_trial=0"], "must be positive"),
    "imbalance below one": (["--imbalance_factor=0.5"], "must be at least 1"),
    "fractional epochs": (["--epochs=1.5"], "'1.5' is not a valid int"),
    "not a boolean": (["--batch_norm=maybe"], "not a boolean (valid: true, "
                      "false)"),
    # Choices and combinations.
    "unknown objective": (["--objective=accuracy"], "valid: loss, val_loss, "
                          "error_rate, val_error_rate"),
    "unknown optimizer": (["--optimizer=rmsprop"], "valid: adam, sgd"),
    "unknown scaler": (["--scaler=minmax"], "valid: standard, zero_one"),
    "unknown tracker": (["--tracker=bp_cosine,hessian"],
                        "unknown tracker 'hessian' (valid: bp_cosine"),
    "val_loss without validation": (["--objective=val_loss",
                                      "--validation_frac=0"],
                                     "objective 'val_loss' needs validation "
                                     "data, but --validation_frac=0 holds "
                                     "none out (valid: --validation_frac in "
                                     "(0, 1), or --objective=loss)"),
    "val_error_rate without validation": (
        ["--objective=val_error_rate", "--validation_frac=0"],
        "or --objective=error_rate)"),
    "error rate of a reconstruction": (["--problem_type=reconstruction",
                                        "--objective=val_error_rate"],
                                       "needs labels (valid for "
                                       "reconstruction: loss, val_loss)"),
    "stray argument": (["mnist"], "unexpected argument(s) ['mnist']"),
    "sublayer points of a chained rule": (
        ["--algorithm=bp", "--arch=E8p2-T2-Hm", "--feedback_points=sublayer"],
        "--feedback_points=sublayer: 'bp' has no teaching signal to place "
        "(valid: --feedback_points=block, or --algorithm in dfa, dkp"),
    "sublayer points without sublayers": (
        ["--algorithm=dfa", "--arch=256", "--feedback_points=sublayer"],
        "--arch=256 has no transformer or mixer block, so sublayer is block "
        "(valid: --feedback_points=block)"),
    "sign feedback from a non-uniform law": (
        ["--algorithm=brsf", "--bw_init=orthogonal"],
        "--bw_init=orthogonal: brsf draws its feedback magnitudes from a "
        "uniform law (valid: --bw_init in uniform, glorot_uniform)"),
    "pepita on a residual unit": (
        ["--algorithm=pepita", "--arch=16C3-R16"],
        "--algorithm=pepita: 'R16' in --arch=16C3-R16 is a 'residual' block, "
        "not a layer and its activation (valid: dense and conv blocks"),
    "pepita on a transformer": (
        ["--algorithm=pepita", "--arch=E8p7-T2-Hm"],
        "'E8p7' in --arch=E8p7-T2-Hm is a 'embed' block, not a layer"),
    "pepita with batch norm": (
        ["--algorithm=pepita", "--batch_norm=true"],
        "--algorithm=pepita: '256' has a norm layer, which PEPITA's update "
        "skips (valid: --batch_norm=false, no :bn or :ln)"),
    "pepita with dropout after a pool": (
        ["--algorithm=pepita", "--arch=8C3:d0.1-P2-16"],
        "--algorithm=pepita: '8C3:d0.1' drops units of its pooled output, "
        "not of the activations PEPITA compares (valid: dropout on blocks "
        "without a pool after them)"),
    "pepita on a reconstruction": (
        ["--algorithm=pepita", "--problem_type=reconstruction"],
        "algorithm 'pepita' needs labels and cannot train reconstruction"),
    "fg_a with batch norm": (
        ["--algorithm=fg_a", "--arch=resnet20", "--dataset=cifar10"],
        "--algorithm=fg_a: '16C3p1:bn:nobias' has batch norm, which mixes "
        "the examples that fg_a perturbs one by one"),
    "no forward-gradient directions": (
        ["--algorithm=fg_w", "--fg_directions=0"],
        "--fg_directions=0: must be positive"),
    "head without tokens": (["--arch=32C3-Hm"], "head token 'Hm' in "
                            "'32C3-Hm' must close a token block"),
    "transformer without tokens": (["--arch=T4"], "token 'T4' in 'T4' needs "
                                   "tokens: put a patch embedding before it"),
    "heads that do not divide": (["--arch=E8p2-T3"], "3 heads do not divide "
                                 "the tokens' 8 features"),
}
