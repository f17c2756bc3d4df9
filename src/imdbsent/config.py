"""Typed configs: a recipe is a TOML file with a [model] and a [train] table; the command line
overrides single fields. Recipes ship inside the package (`configs/` at the top of the
repository points at them), so `--config baseline` works wherever imdbsent is installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tomllib
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from imdbsent.errors import BadValue, UserError

CONFIG_VERSION = 1
HUB_DEFAULT = "stanfordnlp/imdb"  # where `prepare` gets IMDB by default (the CLI shows it)
DATA_DEFAULT = "data/imdb"  # where `prepare` puts it, and where recipes read it, by default
MODELS = ("rnn", "lstm", "gru", "cnn", "rcnn", "nbow", "nblr", "ensemble")
EMBEDDED = ("rnn", "lstm", "gru", "cnn")  # the models with a word embedding of their own
_RECURRENT = ("embedding_dim", "hidden_dim", "num_layers", "bidirectional", "dropout", "pooling",
              "packed", "region_size", "region_dim", "region_passes")
#: The [model] fields each model reads; it ignores the others (models.build is the truth, and a
#: test checks this against it).
MODEL_FIELDS = {"rnn": ("embedding_dim", "hidden_dim"), "lstm": _RECURRENT, "gru": _RECURRENT,
                "cnn": ("embedding_dim", "dropout", "filter_sizes", "num_filters"),
                "rcnn": ("hidden_dim", "dropout", "region_size", "region_dim", "region_passes"),
                "nbow": ("embedding_dim", "dropout", "ngram_buckets", "ngrams", "prior_tokens"),
                "nblr": ("ngram_buckets", "ngrams"), "ensemble": ("members",)}
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
POOLINGS = ("last", "max", "mean")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
SEED_LIMIT = 2**32  # seeds are 0 to 2**32 - 1, as numpy takes them
#: What an ensemble's recipe or flags set (and give its members); the rest is each member's.
ENSEMBLE_OWN = ("data", "train.seed", "train.device")
#: Seconds a process of a distributed training waits for the others (--dist-timeout).
DIST_TIMEOUT = 300.0


@dataclass
class ModelConfig:
    """The network. Fields a model does not use are ignored by it (e.g. filter_sizes by gru).
    `prior_tokens` (nbow) averages each text's embeddings as if it had that many more tokens,
    all zero vectors, so that a text of a few words scores near the bias instead of as
    confidently as a whole review. `region_size` (lstm, gru; odd, 0 for none) adds to each
    word's embedding a region embedding of `region_dim` dimensions, learned before training from
    the training and unlabeled reviews in `region_passes` passes (`regions`); rcnn reads
    regions of that many words (bags, and their region embeddings) and needs it. An `ensemble`
    names its `members`: recipes (names or paths) trained one after another."""

    name: str = "gru"
    embedding_dim: int = 100
    hidden_dim: int = 256
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.0
    pooling: str = "last"
    packed: bool = False
    filter_sizes: list[int] = field(default_factory=lambda: [3, 4, 5])
    num_filters: int = 100
    ngram_buckets: int = 0
    ngrams: int = 2
    prior_tokens: float = 0.0
    region_size: int = 0
    region_dim: int = 100
    region_passes: int = 1
    members: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """The optimisation. `max_length` 0 keeps whole reviews; `patience` 0 never stops early;
    `clip_grad` 0 does not clip; `vectors` is empty (none), a GloVe/word2vec text file, or
    `prepared`: the vectors that `prepare` learned from the dataset's own reviews; `crop` is the
    fraction of training reviews cut, each epoch, to a random run of 1 to 3 of their sentences;
    `calibrate` fits a temperature and bias on the validation split after training;
    `precision` is fp32 or bf16 (autocast); `adversarial` > 0 also trains on word embeddings
    perturbed along the loss gradient, a perturbation of that L2 norm a review;
    `virtual_adversarial` > 0 also trains on the unlabeled reviews' embeddings perturbed where
    the prediction moves most, by that norm (needs the `unsupervised` split); `world_size`
    records how many processes trained the run (set by training, not by a recipe;
    `batch_size` is per process); `averages` lists decays (each in (0, 1)) of exponential
    moving averages of the weights, kept after every step, each written at its best validation
    loss beside `best`, for an ensemble to stack as inputs of their own (in the model's place)."""

    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_grad: float = 0.0
    schedule: str = "constant"
    warmup: float = 0.0
    patience: int = 0
    max_length: int = 0
    seed: int = 1234
    device: str = "auto"
    vectors: str = ""
    crop: float = 0.0
    calibrate: bool = True
    precision: str = "fp32"
    adversarial: float = 0.0
    virtual_adversarial: float = 0.0
    world_size: int = 1
    averages: list[float] = field(default_factory=list)


@dataclass
class Config:
    """A whole recipe: where the prepared data is, the model, the training. `split_ratio`,
    when set, is the train share of the train/valid split the recipe is meant for (prepare's
    --split-ratio); training refuses data split otherwise. 0: any."""

    version: int = CONFIG_VERSION
    recipe: str = ""  # set when a run starts: the recipe's name, or its file's stem
    started: str = ""  # set when a run starts: its local time, ISO 8601 (a copy keeps it)
    data: str = DATA_DEFAULT
    split_ratio: float = 0.0
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self, used: bool = False) -> str:
        """The resolved config as TOML, loadable again with `load`; `used`: without the fields
        that go unused (for people to read): the [model] fields its model ignores (and
        `region_dim` without region embeddings), and an ensemble's [train] fields but those its
        members take (ENSEMBLE_OWN)."""
        top = {k: v for k, v in self.to_dict().items() if not isinstance(v, dict)}
        lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
        for table in ("model", "train"):
            lines += ["", f"[{table}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in getattr(self, table).__dict__.items()
                      if not used or self._uses(f"{table}.{k}")]
        return "\n".join(lines) + "\n"

    def _uses(self, key: str) -> bool:
        table, name = key.split(".")
        if table == "model":
            if name in ("region_dim", "region_passes"):  # of region embeddings not there
                return self.model.region_size > 0 and name in MODEL_FIELDS[self.model.name]
            return name == "name" or name in MODEL_FIELDS[self.model.name]
        return self.model.name != "ensemble" or key in ENSEMBLE_OWN


def member_names(cfg: Config) -> list[str]:
    """An ensemble's member names (a recipe's name, or a path's file stem), each once."""
    names = [Path(ref).stem for ref in cfg.model.members]
    for name in names:
        if names.count(name) > 1:
            raise UserError(f"model.members: two members are named {name!r}")
        if "@" in name:  # NAME@DECAY names a member's moving average (runs.member_checkpoint)
            raise UserError(f"model.members: {name!r}: a member's name has no '@'")
    return names


def load_member(cfg: Config, ref: str) -> Config:
    """An ensemble's member recipe, reading the ensemble's data on its device, with the
    ensemble's seed (so `train --seed` trains every member anew)."""
    try:
        member = load(ref, {"data": cfg.data, "train.device": cfg.train.device,
                            "train.seed": cfg.train.seed})
    except UserError as exc:
        raise UserError(f"model.members: {exc}") from None
    if member.model.name == "ensemble":
        raise UserError(f"model.members: {ref} is itself an ensemble")
    member.recipe = member.recipe or Path(ref).stem
    return member


def recipe_names() -> list[str]:
    """The recipes that ship with imdbsent, by name."""
    return sorted(p.name.removesuffix(".toml") for p in _recipes().iterdir()
                  if p.name.endswith(".toml"))


def load(name_or_path: str | Path | None = None, overrides: dict[str, Any] | None = None, *,
         written: bool = False) -> Config:
    """Load a recipe (a path, or the name of a shipped recipe; None is `default`), apply
    `overrides` (dotted keys such as "train.epochs"), and validate the result. `written`: a
    run's own config.toml, which lists every field (so does any file that records `recipe`),
    where a field its model ignores is no mistake of the user's."""
    ref = "default" if name_or_path is None else name_or_path
    text, where = _read(ref)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{where}: not valid TOML ({exc})") from None
    cfg = from_dict(raw, where, overrides)
    if "name" not in raw.get("model", {}) and not (overrides or {}).get("model.name"):
        raise UserError(f"{where}: a recipe names its model: a [model] table with name = one of "
                        f"{', '.join(MODELS)}")
    written = written or "recipe" in raw
    if cfg.model.name == "ensemble":
        _members_own(raw, where, written)
    elif not written and not (overrides or {}).get("model.name"):
        _fields_used(raw, where, cfg.model.name)
    if _is_path(ref):  # members named by path: relative to this file
        base = Path(where).parent
        cfg.model.members = [str((base / m).resolve()) if _is_path(m) else m
                             for m in cfg.model.members]
    return cfg


def _members_own(raw: dict[str, Any], where: str, written: bool) -> None:
    """Refuse an ensemble recipe's [model] or [train] setting that its members would ignore
    (each trains by its own recipe). A run's config.toml (`written`) lists every field: there,
    only a value other than the default is refused."""
    defaults = Config()
    for table in ("model", "train"):
        for key, value in raw.get(table, {}).items():
            dotted = f"{table}.{key}"
            if dotted in (*ENSEMBLE_OWN, "model.name", "model.members", "train.world_size"):
                continue
            if not written or value != getattr(getattr(defaults, table), key, value):
                raise UserError(f"{where}: {dotted}: an ensemble trains each member by its own "
                                "recipe; set it in the member recipes instead")


def _fields_used(raw: dict[str, Any], where: str, name: str) -> None:
    """Refuse a recipe's [model] field that its model ignores (`hidden_dim` for cnn), as a
    typo or a misunderstanding that would otherwise train something else than was meant. Not
    for a run's config.toml, which lists every field, nor under `--model`, which trains the
    recipe as another model."""
    for key in raw.get("model", {}):
        if key != "name" and key not in MODEL_FIELDS[name]:
            raise UserError(f"{where}: model.{key}: {name} does not use it (its fields: "
                            f"{', '.join(MODEL_FIELDS[name])})")


def from_dict(raw: dict[str, Any], where: str, overrides: dict[str, Any] | None = None) -> Config:
    """Build and validate a Config from nested plain values (a parsed TOML or a run's config)."""
    version = raw.get("version", CONFIG_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{where}: version must be a positive whole number (this imdbsent "
                        f"reads up to {CONFIG_VERSION}), not {version!r}")
    if version > CONFIG_VERSION:
        raise UserError(f"{where}: config version {version} is newer than this imdbsent "
                        f"understands ({CONFIG_VERSION}); upgrade imdbsent")
    cfg = Config()
    for key, value in raw.items():
        if key in ("model", "train"):
            if not isinstance(value, dict):
                raise UserError(f"{where}: [{key}] must be a table")
            for sub, subvalue in value.items():
                _set(cfg, f"{key}.{sub}", subvalue, where)
        else:
            _set(cfg, key, value, where)
    in_file = problem(cfg)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    for key, value in given.items():
        _set(cfg, key, value, "command line")
    found = problem(cfg)
    if found and (in_file or not given):
        raise UserError(f"{where}: {found}")
    if found:  # blamed on the command line where the file alone was fine
        named = next((k for k in given if found.startswith(f"{k} ")), None)
        raise BadValue(named, found[len(named) + 1:]) if named else UserError(
            f"command line: {found}")
    return cfg


def flag(key: str) -> str:
    """The command-line flag of a dotted config key or of a parameter (`split_ratio`)."""
    return "--model" if key == "model.name" else "--" + key.split(".")[-1].replace("_", "-")


def problem(cfg: Config) -> str | None:
    """What no model or optimiser could use in `cfg` (the first problem, naming the field), or
    None."""
    m, t = cfg.model, cfg.train
    checks = [
        *((value in choices, f"{key} must be one of {', '.join(choices)}, not {value!r}")
          for key, value, choices in (("model.name", m.name, MODELS),
                                      ("model.pooling", m.pooling, POOLINGS),
                                      ("train.optimizer", t.optimizer, OPTIMIZERS),
                                      ("train.schedule", t.schedule, SCHEDULES),
                                      ("train.device", t.device, DEVICES),
                                      ("train.precision", t.precision, PRECISIONS))),
        (m.embedding_dim > 0 and m.hidden_dim > 0 and m.num_layers > 0,
         "model dimensions and num_layers must be positive"),
        (0.0 <= m.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (len(m.filter_sizes) > 0 and min(m.filter_sizes) > 0 and m.num_filters > 0,
         "model.filter_sizes and num_filters must be positive"),
        (m.name != "cnn" or not t.max_length or max(m.filter_sizes, default=0) <= t.max_length,
         "model.filter_sizes: a filter wider than train.max_length never reads a whole window"),
        (m.ngram_buckets >= 0 and m.ngrams >= 1, "model.ngram_buckets must be 0 or more, "
         "model.ngrams 1 or more"),
        (math.isfinite(m.prior_tokens) and m.prior_tokens >= 0,
         "model.prior_tokens must be a number, 0 or more"),
        (m.region_size == 0 or (m.region_size > 0 and m.region_size % 2 == 1),
         "model.region_size must be 0 (none) or an odd number of words, to centre on a word"),
        (m.name != "rcnn" or m.region_size > 0,
         "model.region_size: rcnn reads regions of an odd number of words; set it (e.g. 5)"),
        (m.region_dim > 0, "model.region_dim must be positive"),
        (m.region_passes > 0, "model.region_passes must be at least 1"),
        (m.name != "ensemble" or len(m.members) >= 2,
         "model.name ensemble needs model.members: two or more recipes"),
        (m.name == "ensemble" or not m.members,
         f"model.name {m.name} takes no model.members (an ensemble's recipes)"),
        (t.epochs > 0, "train.epochs must be at least 1"),
        (t.batch_size > 0, "train.batch_size must be at least 1"),
        (math.isfinite(t.lr) and t.lr > 0, "train.lr must be a positive number"),
        *((math.isfinite(getattr(t, key)) and getattr(t, key) >= 0,
           f"train.{key} must be a number, 0 or more")
          for key in ("momentum", "weight_decay", "clip_grad", "adversarial",
                      "virtual_adversarial")),
        *((not getattr(t, key) or m.name in EMBEDDED, f"train.{key} needs a model with a word "
           f"embedding ({', '.join(EMBEDDED)}), not {m.name}")
          for key in ("adversarial", "virtual_adversarial")),
        (not t.vectors or m.name not in ("nblr", "rcnn"), "train.vectors needs a model with word "
         f"embeddings ({m.name} has none: --vectors none)"),
        (0.0 <= t.warmup < 1.0, "train.warmup is a fraction of training, in [0, 1)"),
        (t.patience >= 0, "train.patience must be 0 or more"),
        (t.max_length >= 0, "train.max_length must be 0 (all tokens) or more"),
        (0 <= t.seed < SEED_LIMIT, f"train.seed must be in 0..{SEED_LIMIT - 1}"),
        (0.0 <= t.crop <= 1.0, "train.crop is a fraction of the training reviews, in [0, 1]"),
        (t.world_size >= 1, "train.world_size must be at least 1"),
        (all(0.0 < d < 1.0 for d in t.averages) and len(set(t.averages)) == len(t.averages),
         "train.averages: each decay must be in (0, 1), and named once"),
        (0.0 <= cfg.split_ratio < 1.0, "split_ratio is a share of the train split, in [0, 1)"),
    ]
    return next((message for ok, message in checks if not ok), None)


def _is_path(ref: str | Path) -> bool:
    """A recipe reference that names a file, not a shipped recipe."""
    return Path(ref).suffix == ".toml" or "/" in str(ref)


def _read(name_or_path: str | Path) -> tuple[str, str]:
    """A recipe's text and where it is from; a name that is not shipped, or a file not
    found, says what was probably meant."""
    path = Path(name_or_path).expanduser()
    if not _is_path(name_or_path):
        shipped = _recipes() / f"{name_or_path}.toml"
        if name_or_path and shipped.is_file():
            return shipped.read_text(encoding="utf-8"), f"{name_or_path}.toml"
        here = (f"; {name_or_path}.toml here is a file: give it as --config {name_or_path}.toml"
                if name_or_path and Path(f"{name_or_path}.toml").is_file() else "")
        raise UserError(f"no recipe named {str(name_or_path)!r} (shipped: "
                        f"{', '.join(recipe_names())}; or give a path to a .toml file){here}")
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        shipped = path.stem in recipe_names() and not path.exists()  # configs/lstm.toml, from
        hint = f"; the shipped recipe is --config {path.stem}, from anywhere" if shipped else ""
        raise UserError(f"{path}: cannot read config ({getattr(exc, 'strerror', None) or exc})"
                        f"{hint}") from None


def _recipes():
    return resources.files("imdbsent") / "configs"


def _set(cfg: Config, dotted: str, value: Any, where: str) -> None:
    *parents, leaf = dotted.split(".")
    target: Any = cfg
    for part in parents:
        target = getattr(target, part, None)
        if not dataclasses.is_dataclass(target):
            raise _unknown(dotted, where)
    hints = typing.get_type_hints(type(target))
    if leaf not in hints or dataclasses.is_dataclass(getattr(target, leaf)):
        raise _unknown(dotted, where)
    setattr(target, leaf, _coerce(hints[leaf], value, dotted, where))


def _keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every settable key of a Config, dotted ("train.epochs")."""
    node = Config() if node is None else node
    out = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        out += (_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value)
                else [prefix + f.name])
    return out


def _unknown(dotted: str, where: str) -> UserError:
    """An unknown key, with the table where a key of that name belongs, or a close spelling."""
    keys = _keys()
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}  # no two tables share a field's name
    leaf = dotted.rsplit(".", 1)[-1]
    same = [leaves[leaf]] if leaf in leaves else []
    close = same or [leaves[k] for k in difflib.get_close_matches(leaf, leaves, 1, 0.8)]
    hint = ""
    if close:
        table = close[0].rpartition(".")[0]
        hint = (f" ({leaf} belongs in [{table}]: {close[0]})" if same and table else
                f" ({leaf} belongs at the top, outside any table)" if same else
                f" (did you mean {close[0]}?)")
    return UserError(f"{where}: unknown config key {dotted!r}{hint}")


def _coerce(hint: Any, value: Any, key: str, where: str) -> Any:
    """Accept a value of the field's type (an int where a float is expected too; a list of
    the element type for list fields)."""
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, list) and all(_is(v, item) for v in value):
            return value
        raise UserError(f"{where}: {key} must be a list of {item.__name__}, not {value!r}")
    if hint is float and _is(value, int):
        return float(value)
    if _is(value, hint):
        return value
    raise UserError(f"{where}: {key} must be {hint.__name__}, not {value!r}")


def _is(value: Any, kind: type) -> bool:
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def regions_recipe(cfg: Config) -> tuple[int, int, int, int] | None:
    """What decides a model's region embeddings on given data (region size, dimensions,
    passes, seed), or None for a model without them: two recipes with the same learn the same
    ones."""
    m = cfg.model
    if not m.region_size or "region_size" not in MODEL_FIELDS[m.name]:
        return None
    return m.region_size, m.region_dim, m.region_passes, cfg.train.seed
