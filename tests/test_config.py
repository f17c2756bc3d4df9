import pytest

from imdbsent import config
from imdbsent.errors import BadValue, UserError


def test_baseline_recipe_is_the_tutorial():
    cfg = config.load("baseline")
    assert (cfg.model.name, cfg.model.embedding_dim, cfg.model.hidden_dim) == ("rnn", 100, 256)
    t = cfg.train
    assert (t.optimizer, t.lr, t.momentum, t.batch_size, t.epochs) == ("sgd", 1e-3, 0.0, 64, 5)
    assert (t.max_length, t.clip_grad, t.schedule, t.weight_decay) == (0, 0.0, "constant", 0.0)


def test_every_shipped_recipe_loads():
    names = config.recipe_names()
    assert {"baseline", "default"} <= set(names)
    for name in names:
        assert config.load(name).model.name in config.MODELS


def test_overrides_apply_and_ints_become_floats():
    cfg = config.load("baseline", {"train.epochs": 2, "train.lr": 1, "model.name": "gru"})
    assert cfg.train.epochs == 2 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.name == "gru"


def test_a_config_shown_to_people_leaves_out_what_goes_unused():
    """report shows `to_toml(used=True)`: a CNN without hidden_dim, an ensemble without the
    [train] settings that only its members' recipes decide."""
    shown = config.load("cnn").to_toml(used=True)
    assert "filter_sizes = " in shown and "hidden_dim" not in shown and "optimizer = " in shown
    shown = config.load("ensemble").to_toml(used=True)
    keys = {line.split(" = ")[0] for line in shown.splitlines()[shown.splitlines().index("[train]"):]}
    assert keys == {"[train]", "seed", "device"}
    assert "optimizer = " in config.load("ensemble").to_toml()  # a run's config.toml: all
    assert "region_size = 0" in config.load("default").to_toml(used=True)
    assert "region_dim" not in config.load("default").to_toml(used=True)  # no regions: no size
    assert "region_passes" not in config.load("default").to_toml(used=True)
    assert "region_passes = 3" in config.load("tvlstm").to_toml(used=True)
    assert "region_dim = 100" in config.load("tvlstm").to_toml(used=True)
    assert "region_dim" not in config.load("cnn").to_toml(used=True)


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = config.load("default", {"train.vectors": 'a "quoted" path'})
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert config.load(path) == cfg


@pytest.mark.parametrize("text, message", [
    ("[model]\nname = 'transformer'", "model.name must be one of"),
    ("[train]\nepochs = 'five'", "train.epochs must be int"),
    ("[train]\nbogus = 1", "unknown config key 'train.bogus'$"),
    ("[train]\ndropout = 0.1", r"'train.dropout' \(dropout belongs in \[model\]: model.dropout\)$"),
    ("seed = 1", r"'seed' \(seed belongs in \[train\]: train.seed\)$"),
    ("[train]\ndata = 'x'", r"'train.data' \(data belongs at the top, outside any table\)$"),
    ("[train]\nepoch = 2", r"'train.epoch' \(did you mean train.epochs\?\)$"),
    ("version = 99", "newer than this imdbsent"),
    ("[train\n", "not valid TOML"),
    ("[train]\nlr = -1.0", "train.lr must be a positive number"),
    ("[train]\nlr = inf", "train.lr must be a positive number"),
    ("[train]\nadversarial = nan", "train.adversarial must be a number, 0 or more"),
    ("[train]\nclip_grad = inf", "train.clip_grad must be a number, 0 or more"),
    ("[train]\nvirtual_adversarial = -2.0", "train.virtual_adversarial must be a number, 0 or"),
    ("[train]\nmax_length = -5", "train.max_length must be 0 \\(all tokens\\) or more"),
    ("[train]\nseed = -1", "train.seed must be in 0..4294967295"),
    ("[train]\nseed = 4294967296", "train.seed must be in 0..4294967295"),
])
def test_bad_configs_name_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as refused:
        config.load(path)
    assert str(refused.value).startswith(f"{path}: ")


def test_a_bad_value_from_the_command_line_is_blamed_on_it_not_on_the_recipe(tmp_path):
    for overrides, message in [  # BadValue: the command line names each by its flag
            ({"model.name": "foo"}, "model.name must be one of"),
            ({"train.seed": -5}, "train.seed must be in"),
            ({"train.optimizer": "rmsprop"},
             "train.optimizer must be one of sgd, adam, adamw, not 'rmsprop'$"),
            ({"train.epochs": 0}, "train.epochs must be at least 1$"),
            ({"model.name": "ensemble"}, "model.name ensemble needs model.members: two or more"),
    ]:
        with pytest.raises(BadValue, match=f"^{message}") as refused:
            config.load("nblr", overrides)
        assert refused.value.name == next(iter(overrides))
    with pytest.raises(BadValue, match="^model.name lstm takes no model.members"):
        config.load("ensemble", {"model.name": "lstm"})
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nname = \"nblr\"\n[train]\nepochs = 0")
    with pytest.raises(UserError, match=f"^{path}: train.epochs must be at least 1"):
        config.load(path, {"train.lr": 0.5})  # the file's own problem
    assert config.load(path, {"train.epochs": 2}).train.epochs == 2  # mended by the command line


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(UserError, match="baseline"):
        config.load("nope")


def test_ensemble_names_two_or_more_member_recipes(tmp_path):
    cfg = config.load("ensemble")
    assert cfg.model.members == ["default", "nblr"]
    cfg.data = "elsewhere"
    assert config.member_names(cfg) == ["default", "nblr"]
    cfg.train.seed = 7
    member = config.load_member(cfg, "nblr")
    assert member.model.name == "nblr" and member.data == "elsewhere"  # the ensemble's data
    assert member.train.seed == 7  # and its seed


def test_member_paths_are_relative_to_the_ensembles_file_and_names_unique(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "e.toml").write_text(
        '[model]\nname = "ensemble"\nmembers = ["mine.toml", "nblr"]\n')
    monkeypatch.chdir(tmp_path)
    cfg = config.load("sub/e.toml")
    assert cfg.model.members == [str(tmp_path / "sub" / "mine.toml"), "nblr"]
    cfg.model.members = ["a/nblr.toml", "nblr"]
    with pytest.raises(UserError, match="two members are named 'nblr'"):
        config.member_names(cfg)


def test_a_split_ratio_outside_0_1_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('split_ratio = 1.0\n[model]\nname = "nblr"\n')
    with pytest.raises(UserError, match=r"split_ratio is a share of the train split, in \[0, 1\)"):
        config.load(path)


@pytest.mark.parametrize("model, message", [
    ('name = "ensemble"\nmembers = ["default"]', "ensemble needs model.members: two or more"),
    ('name = "gru"\nmembers = ["default", "nblr"]', "gru takes no model.members"),
    ('name = "ensemble"\nmembers = [1, 2]', "model.members must be a list of str"),
])
def test_bad_ensembles_are_refused(tmp_path, model, message):
    path = tmp_path / "e.toml"
    path.write_text(f"[model]\n{model}\n")
    with pytest.raises(UserError, match=message):
        config.load(path)


def test_an_ensemble_cannot_hold_an_ensemble(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('[model]\nname = "ensemble"\nmembers = ["ensemble", "nblr"]\n')
    with pytest.raises(UserError, match="ensemble.* is itself an ensemble"):
        config.load_member(config.load(path), "ensemble")
    with pytest.raises(UserError, match="^model.members: no recipe named 'nosuch'"):
        config.load_member(config.load(path), "nosuch")


@pytest.mark.parametrize("text, message", [
    ("", "a recipe names its model: a \\[model\\] table with name"),
    ('[train]\nepochs = 2\n', "a recipe names its model"),
    ('version = "1"\n[model]\nname = "nblr"\n', "version must be a positive whole number "
     "\\(this imdbsent reads up to 1\\), not '1'"),
    ('version = 0\n[model]\nname = "nblr"\n', "version must be a positive whole number"),
    ('version = 2\n[model]\nname = "nblr"\n', "config version 2 is newer than this imdbsent"),
    ('[model]\nname = "ensemble"\nmembers = ["nbow", "nblr"]\nhidden_dim = 5\n',
     "model.hidden_dim: an ensemble trains each member by its own recipe"),
    ('[model]\nname = "ensemble"\nmembers = ["nbow", "nblr"]\n[train]\nepochs = 1\n',
     "train.epochs: an ensemble trains each member by its own recipe"),
    ('[model]\nname = "ensemble"\nmembers = ["nbow", "nblr"]\n[train]\nepochs = 5\n',
     "train.epochs: an ensemble"),  # the default's value, but written: the members ignore it
    ('[model]\nname = "cnn"\nfilter_sizes = [3, 60]\n[train]\nmax_length = 50\n',
     "model.filter_sizes: a filter wider than train.max_length"),
    ('[model]\nname = "lstm"\nregion_size = 4\n', "model.region_size must be 0 \\(none\\) or "
     "an odd number of words, to centre on a word"),
    ('[model]\nname = "gru"\nregion_size = -3\n', "model.region_size must be 0"),
    ('[model]\nname = "lstm"\nregion_size = 3\nregion_dim = 0\n',
     "model.region_dim must be positive"),
    ('[model]\nname = "gru"\nregion_size = 3\nregion_passes = 0\n',
     "model.region_passes must be at least 1"),
    ('[model]\nname = "cnn"\nregion_size = 3\n', "model.region_size: cnn does not use it"),
    ('[model]\nname = "rcnn"\nhidden_dim = 50\n', "model.region_size: rcnn reads regions"),
    ('[model]\nname = "rcnn"\nregion_size = 5\n[train]\nvectors = "prepared"\n',
     "train.vectors needs a model with word embeddings \\(rcnn has none"),
])
def test_a_recipe_that_would_train_something_else_than_it_says_is_refused(tmp_path, text,
                                                                          message):
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=f"^{path}: {message}"):
        config.load(path)


def test_an_ensemble_recipe_may_set_its_own_fields_and_write_its_defaults(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text('data = "d"\n[model]\nname = "ensemble"\nmembers = ["nbow", "nblr"]\n'
                    '[train]\nseed = 7\ndevice = "cpu"\n')
    cfg = config.load(path)
    assert (cfg.data, cfg.train.seed, cfg.train.device) == ("d", 7, "cpu")
    path.write_text(cfg.to_toml())  # a run's config.toml: every field, most at its default
    assert config.load(path).model.members == ["nbow", "nblr"]


def test_a_recipe_field_that_its_model_ignores_is_refused(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[model]\nname = "cnn"\nhidden_dim = 512\n')
    with pytest.raises(UserError, match=f"^{path}: model.hidden_dim: cnn does not use it "
                       r"\(its fields: embedding_dim, dropout, filter_sizes, num_filters\)$"):
        config.load(path)
    assert config.load(path, {"model.name": "lstm"}).model.hidden_dim == 512  # --model lstm
    every = config.load("cnn").to_toml()  # as a run's config.toml lists them, hidden_dim too
    (tmp_path / "run.toml").write_text(every)  # it records `recipe`: a run's, loads
    assert config.load(tmp_path / "run.toml").model.name == "cnn"
    (tmp_path / "old.toml").write_text(every.replace('recipe = ""\n', ""))  # before `recipe`
    with pytest.raises(UserError, match="model.hidden_dim: cnn does not use it"):
        config.load(tmp_path / "old.toml")  # as a recipe to train
    assert config.load(tmp_path / "old.toml", written=True).model.name == "cnn"  # as a run's


def test_a_shipped_recipe_named_by_a_path_that_is_not_here_names_the_recipe(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository root: no configs/ here
    with pytest.raises(UserError, match=r"^configs/lstm.toml: cannot read config \(No such file "
                       r"or directory\); the shipped recipe is --config lstm, from anywhere$"):
        config.load("configs/lstm.toml")
    with pytest.raises(UserError, match=r"^mine.toml: cannot read config \(No such file or "
                       r"directory\)$"):
        config.load("mine.toml")
    with pytest.raises(UserError, match=r"^nbow.toml: cannot read config \(No such file or "
                       r"directory\); the shipped recipe is --config nbow, from anywhere$"):
        config.load("nbow.toml")


def test_a_recipe_name_that_is_a_file_here_says_to_give_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text("version = 1\n[model]\nname = 'gru'\n")
    with pytest.raises(UserError, match=r"^no recipe named 'tiny' \(shipped: .*\); tiny.toml "
                       r"here is a file: give it as --config tiny.toml$"):
        config.load("tiny")
    assert config.load("tiny.toml").model.name == "gru"
    with pytest.raises(UserError, match=r"^no recipe named '' \(shipped: "):
        config.load("")  # not the default recipe: an empty --config "$UNSET"
