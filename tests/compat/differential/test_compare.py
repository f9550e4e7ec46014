"""The comparison reports every difference and filters only the named deliberate ones, only where they apply."""

from __future__ import annotations

import copy
from typing import Any

from compat.differential.compare import compare
from compat.differential.difference import file_kind
from compat.differential.fake_observations import config as _config
from compat.differential.fake_observations import fit as _fit
from compat.differential.fake_observations import resumed as _resumed


def test_identical_observations_have_no_difference() -> None:
    assert compare(_config(), {"fit": _fit()}, {"fit": _fit()}) == []


def test_every_field_difference_is_reported() -> None:
    stepstone = _fit(global_step=3, files={"ckpt0/.stepstone-index.json": "file"}, weights=[0.1, 0.3])
    found = {d.field for d in compare(_config(), {"fit": _fit()}, {"fit": stepstone})}
    assert found == {"global_step", "files.only_in_stepstone", "files.only_in_lightning", "weights"}


def test_an_error_type_difference_hides_its_consequences() -> None:
    diffs = compare(_config(), {"fit": _fit()}, {"fit": _fit(error="ValueError: x", global_step=0)})
    assert [d.field for d in diffs] == ["error"]


def test_mid_epoch_resume_data_is_filtered_only_for_the_resumed_epoch() -> None:
    lightning = {"resume_mid": _resumed()}
    stepstone = {"resume_mid": _resumed(weights=[9.0, 9.0])}
    stepstone["resume_mid"]["trained"][0][2] = [2, 3]  # next unseen batch's data
    assert compare(_config(), lightning, stepstone) == []
    later = copy.deepcopy(stepstone)
    later["resume_mid"]["trained"][2][2] = [0, 1]  # a later epoch must match exactly
    assert [d.field for d in compare(_config(), lightning, later)] == ["trained.ids"]


def test_weights_are_not_excused_without_the_data_difference() -> None:
    diffs = compare(_config(), {"resume_mid": _resumed()}, {"resume_mid": _resumed(weights=[9.0, 9.0])})
    assert [d.field for d in diffs] == ["weights"]


def test_pending_validation_is_one_extra_run_at_the_resumed_step() -> None:
    lightning = {"resume_mid": _resumed(val_runs=[[4, 1]])}
    ok = {"resume_mid": _resumed(val_runs=[[1, 0], [4, 1]])}
    assert compare(_config(), lightning, ok) == []
    elsewhere = {"resume_mid": _resumed(val_runs=[[2, 0], [4, 1]])}
    assert [d.field for d in compare(_config(), lightning, elsewhere)] == ["val_runs"]


def test_restored_metrics_are_filtered_only_on_resume() -> None:
    assert (
        compare(_config(), {"resume_mid": _resumed()}, {"resume_mid": _resumed(metrics_at_start=["val_m"])})
        == []
    )
    diffs = compare(_config(), {"fit": _fit()}, {"fit": _fit(metrics_at_start=["val_m"])})
    assert [d.field for d in diffs] == ["metrics_at_start"]


def test_fresher_last_file_is_filtered_but_an_extra_one_is_not() -> None:
    last_l = {"ckpt0/last.ckpt": {"epoch": 0, "global_step": 2}}
    last_s = {"ckpt0/last.ckpt": {"epoch": 1, "global_step": 4}}
    assert compare(_config(), {"fit": _fit(files=last_l)}, {"fit": _fit(files=last_s)}) == []
    stale = {"ckpt0/last.ckpt": {"epoch": 0, "global_step": 1}}
    assert len(compare(_config(), {"fit": _fit(files=last_l)}, {"fit": _fit(files=stale)})) == 1
    piled = {**last_s, "ckpt0/epoch=0-last.ckpt": {"epoch": 0, "global_step": 2}}
    assert len(compare(_config(), {"fit": _fit(files=last_l)}, {"fit": _fit(files=piled)})) == 2


def test_restored_callback_metrics_are_filtered_only_when_never_logged_again() -> None:
    lightning = {"resume_mid": _resumed(callback_metrics={"train_m": 0.5})}
    restored = _resumed(metrics_at_start=["val_m"], callback_metrics={"train_m": 0.5, "val_m": 0.25})
    assert compare(_config(), lightning, {"resume_mid": restored}) == []
    other = _resumed(metrics_at_start=["val_m"], callback_metrics={"train_m": 0.75, "val_m": 0.25})
    assert [d.field for d in compare(_config(), lightning, {"resume_mid": other})] == ["callback_metrics"]


def test_restored_callback_metrics_of_a_run_with_nothing_left_to_train_are_filtered() -> None:
    idle = {"trained": [], "val_runs": [], "sanity_runs": 0, "metrics_at_start": None}
    lightning = {"resume_mid": _resumed(**idle, callback_metrics={})}
    stepstone = {"resume_mid": _resumed(**idle, callback_metrics={"val_m": 0.25})}
    assert compare(_config(), lightning, stepstone) == []
    trained = {"resume_mid": _resumed(metrics_at_start=[], callback_metrics={"val_m": 0.25})}
    assert [d.field for d in compare(_config(), {"resume_mid": _resumed(callback_metrics={})}, trained)] == [
        "callback_metrics"
    ]


def _continued(pairs: list[list[int]], **changes: Any) -> dict[str, Any]:
    """A run continued from ``manual/final.ckpt`` (written at step 2, after epoch 0) that trained ``pairs``."""
    files = {
        "manual/final.ckpt": {"epoch": 1, "global_step": 2},
        "ckpt0/epoch=0-step=2.ckpt": {"epoch": 0, "global_step": 2},
    }
    trained = [[epoch, idx, [2 * idx, 2 * idx + 1]] for epoch, idx in pairs]
    return _fit(**{"ckpt_path": "manual/final.ckpt", "files": files, "trained": trained, **changes})


def _two_batch_epochs(max_steps: int = 20) -> dict[str, Any]:
    config = _config()
    config["data"]["n_train"] = 2
    config["trainer"].update(limit_train_batches=None, max_steps=max_steps)
    return config


def test_a_whole_epoch_after_an_epoch_end_restart_is_filtered_with_its_consequences() -> None:
    after = {"ckpt0/epoch=2-step=5.ckpt": {"epoch": 2, "global_step": 5}}
    one_batch = _continued([[1, 2], [2, 0], [2, 1]], global_step=4, current_epoch=3, weights=[0.5, 0.5])
    one_batch["files"] = {**one_batch["files"], **after}
    whole = _continued([[1, 0], [1, 1], [2, 0], [2, 1]], global_step=6, current_epoch=3)
    whole["files"] = {**whole["files"], "ckpt0/epoch=2-step=6.ckpt": {"epoch": 2, "global_step": 6}}
    callback = {"dirpath": "ckpt0", "best_model_score": None, "kth_value": None, "current_score": None}
    callback.update(kth_best_model_path="", last_model_path="", best_k_models={})
    one_batch["checkpoints"] = [{**callback, "best_model_path": "ckpt0/epoch=2-step=5.ckpt"}]
    whole["checkpoints"] = [{**callback, "best_model_path": "ckpt0/epoch=2-step=6.ckpt"}]
    assert compare(_two_batch_epochs(), {"continue": one_batch}, {"continue": whole}) == []
    empty = _continued([[2, 0], [2, 1]], global_step=4, current_epoch=3)
    assert compare(_two_batch_epochs(), {"continue": empty}, {"continue": whole}) == []
    # A file written before the resume (an earlier step) is not explained.
    before = {
        **whole,
        "files": {**whole["files"], "ckpt0/epoch=0-step=1.ckpt": {"epoch": 0, "global_step": 1}},
    }
    fields = [d.field for d in compare(_two_batch_epochs(), {"continue": empty}, {"continue": before})]
    assert fields == ["files.only_in_stepstone"]
    # From a file written in on_train_epoch_end of epoch 0 (its "epoch" is 0), Lightning relabels epoch 0.
    epoch_end = {"ckpt0/epoch=0-step=2.ckpt": {"epoch": 0, "global_step": 2}}
    again = _continued([[0, 2], [1, 0], [1, 1]], ckpt_path="ckpt0/epoch=0-step=2.ckpt", files=epoch_end)
    next_epoch = _continued([[1, 0], [1, 1], [2, 0]], ckpt_path="ckpt0/epoch=0-step=2.ckpt", files=epoch_end)
    assert compare(_two_batch_epochs(), {"resume_file": again}, {"resume_file": next_epoch}) == []


def test_an_epoch_end_restart_is_filtered_only_in_its_exact_shape() -> None:
    whole = _continued([[1, 0], [1, 1], [2, 0], [2, 1]], global_step=6)
    # Without max_steps Lightning has no such restart.
    one_batch = _continued([[1, 2], [2, 0], [2, 1]], global_step=4)
    fields = [d.field for d in compare(_two_batch_epochs(-1), {"continue": one_batch}, {"continue": whole})]
    assert fields == ["global_step", "trained.batches"]
    # A batch index inside the epoch (not the out-of-range n) is another difference.
    inside = _continued([[1, 1], [2, 0], [2, 1]], global_step=4)
    fields = [d.field for d in compare(_two_batch_epochs(), {"continue": inside}, {"continue": whole})]
    assert fields == ["global_step", "trained.batches"]
    # stepstone's epochs must be whole.
    gap = _continued([[1, 0], [2, 0], [2, 1]], global_step=6)
    fields = [d.field for d in compare(_two_batch_epochs(), {"continue": one_batch}, {"continue": gap})]
    assert fields == ["global_step", "trained.batches"]
    # Lightning's out-of-range batch must carry the finished epoch's label.
    relabelled = _continued([[0, 2], [2, 0], [2, 1]], global_step=4)
    fields = [d.field for d in compare(_two_batch_epochs(), {"continue": relabelled}, {"continue": whole})]
    assert fields == ["global_step", "trained.batches"]
    # A run that did not resume is never filtered.
    fresh_l, fresh_s = _fit(trained=[[1, 2, [4, 5]]]), _fit(trained=[[1, 0, [0, 1]], [1, 1, [2, 3]]])
    fields = [d.field for d in compare(_two_batch_epochs(), {"fit": fresh_l}, {"fit": fresh_s})]
    assert fields == ["trained.batches"]


def test_restored_callback_metrics_are_filtered_after_a_sanity_check_only() -> None:
    idle = {"trained": [], "val_runs": [], "sanity_runs": 1, "metrics_at_start": None}
    lightning = {"resume_mid": _resumed(**idle, callback_metrics={})}
    stepstone = {"resume_mid": _resumed(**idle, callback_metrics={"val_m": 0.25})}
    assert compare(_config(), lightning, stepstone) == []
    more_sanity = {"resume_mid": _resumed(**{**idle, "sanity_runs": 2}, callback_metrics={"val_m": 0.25})}
    assert {d.field for d in compare(_config(), lightning, more_sanity)} == {
        "sanity_runs",
        "callback_metrics",
    }


_MISSING_KEY = (
    "MisconfigurationException: `ModelCheckpoint(monitor='{}')` could not find the monitored key in the returned "
    "metrics: ['val_m', 'epoch', 'step']. HINT: ..."
)


def test_a_monitored_key_missing_only_in_lightning_after_resume_is_filtered_when_stepstone_had_it() -> None:
    config = _config()
    config["logging"] = {"train_on_step": False, "train_on_epoch": True}
    raised = {"resume_mid": _resumed(error=_MISSING_KEY.format("train_m"))}
    restored = {"resume_mid": _resumed(metrics_at_start=["train_m", "val_m"])}
    assert compare(config, raised, restored) == []
    # The file (epoch 0) was written after epoch 0's last batch: stepstone ends that epoch, publishing train_m.
    ended = _resumed(metrics_at_start=["val_m"], trained=[[1, 0, [0, 1]], [1, 1, [2, 3]]])
    raised_ended = {"resume_mid": _resumed(error=_MISSING_KEY.format("train_m"), trained=ended["trained"])}
    assert compare(config, raised_ended, {"resume_mid": ended}) == []
    # Neither: a key stepstone could not have had is a real difference.
    unknown = {"resume_mid": _resumed(metrics_at_start=["val_m"])}
    assert [d.field for d in compare(config, raised, unknown)] == ["error"]
    # A run that did not resume is never filtered.
    fields = [
        d.field for d in compare(config, {"fit": _fit(error=_MISSING_KEY.format("train_m"))}, {"fit": _fit()})
    ]
    assert fields == ["error"]


def test_a_whole_epoch_mean_after_a_mid_epoch_resume_is_filtered_only_with_the_exact_values() -> None:
    config = _config()
    config["data"]["n_train"], config["trainer"]["limit_train_batches"] = 3, None
    config["trainer"]["accumulate_grad_batches"] = 1
    config["logging"] = {"train_on_step": True, "train_on_epoch": True}
    config["train_table"] = [0.25, 0.5, 0.75, 0.125]  # epoch 1 runs at steps 3, 4, 5: 0.125, 0.25, 0.5
    trained = [[1, 1, [2, 3]], [1, 2, [4, 5]]]

    def run(mean: float) -> dict[str, Any]:
        metrics = {"train_m": mean, "train_m_epoch": mean, "train_m_step": 0.5}
        return {"resume_mid": _resumed(trained=trained, callback_metrics=metrics)}

    whole, after = (0.125 + 0.25 + 0.5) / 3, (0.25 + 0.5) / 2
    assert compare(config, run(after), run(whole)) == []
    assert [d.field for d in compare(config, run(after), run(0.5))] == ["callback_metrics"]
    assert [d.field for d in compare(config, run(0.5), run(whole))] == ["callback_metrics"]
    step_differs = run(whole)
    step_differs["resume_mid"]["callback_metrics"]["train_m_step"] = 0.25
    assert [d.field for d in compare(config, run(after), step_differs)] == ["callback_metrics"]


def test_epoch_means_published_finishing_the_interrupted_epoch_end_are_filtered() -> None:
    config = _config()
    config["logging"] = {"train_on_step": True, "train_on_epoch": True}
    # The file (epoch 0) was written after epoch 0's last batch; both runs go on with epoch 1.
    trained = [[1, 0, [0, 1]], [1, 1, [2, 3]]]
    lightning = {"resume_mid": _resumed(trained=trained, callback_metrics={"train_m_step": 0.5})}
    ended = _resumed(
        trained=trained, metrics_at_start=[], callback_metrics={"train_m_step": 0.5, "train_m_epoch": 0.5}
    )
    assert compare(config, lightning, {"resume_mid": ended}) == []
    # Resumed inside epoch 0 (Lightning's first batch is [0, 1]), that epoch end is no reason.
    inside = _resumed(metrics_at_start=[], callback_metrics={"train_m_step": 0.5, "train_m_epoch": 0.5})
    plain = {"resume_mid": _resumed(callback_metrics={"train_m_step": 0.5})}
    assert [d.field for d in compare(config, plain, {"resume_mid": inside})] == ["callback_metrics"]


def test_the_metric_of_a_pending_validation_is_filtered_only_with_that_validation() -> None:
    lightning = {"resume_mid": _resumed(val_runs=[], callback_metrics={"train_m": 0.5})}
    validated = _resumed(
        val_runs=[[1, 0]], metrics_at_start=[], callback_metrics={"train_m": 0.5, "val_m": 0.25}
    )
    assert compare(_config(), lightning, {"resume_mid": validated}) == []
    later = _resumed(val_runs=[[2, 0]], metrics_at_start=[], callback_metrics={"train_m": 0.5, "val_m": 0.25})
    assert [d.field for d in compare(_config(), lightning, {"resume_mid": later})] == [
        "val_runs",
        "callback_metrics",
    ]


def test_a_metrics_file_of_a_resumed_run_is_filtered_only_when_lightning_ran_nothing() -> None:
    metrics = {"logs/version_1/metrics.csv": "file"}
    nothing = _continued([], val_runs=[], global_step=2, current_epoch=1)
    logged = {**nothing, "files": {**nothing["files"], **metrics}}
    assert compare(_config(), {"continue": nothing}, {"continue": logged}) == []
    # Lightning trained a batch there: a metrics file only stepstone wrote is a real difference.
    trained = _continued([[1, 0]], val_runs=[], global_step=2, current_epoch=1)
    both_trained = {**trained, "files": {**trained["files"], **metrics}}
    fields = [d.field for d in compare(_config(), {"continue": trained}, {"continue": both_trained})]
    assert fields == ["files.only_in_stepstone"]
    # Not a resumed run: not filtered.
    fresh = {**nothing, "ckpt_path": None}
    fields = [
        d.field for d in compare(_config(), {"fit": fresh}, {"fit": {**fresh, "files": logged["files"]}})
    ]
    assert fields == ["files.only_in_stepstone"]


def test_last_at_final_trigger_explains_only_an_epoch_one_lower_at_the_same_step() -> None:
    last = "ckpt0/last.ckpt"
    lightning = {"fit": _fit(files={last: {"epoch": 2, "global_step": 4}})}
    ok = {"fit": _fit(files={last: {"epoch": 1, "global_step": 4}})}
    assert compare(_config(), lightning, ok) == []
    for other in ({"epoch": 0, "global_step": 4}, {"epoch": 1, "global_step": 3}):
        diffs = compare(_config(), lightning, {"fit": _fit(files={last: other})})
        assert [d.field for d in diffs] == ["files.content"]
    linked = {"fit": _fit(files={last: {"link": "a.ckpt", "epoch": 2, "global_step": 4}})}
    assert [d.field for d in compare(_config(), linked, ok)] == ["files.content"]
    topk = "ckpt0/epoch=1-step=4.ckpt"  # not a last file
    diffs = compare(_config(), {"fit": _fit(files={topk: {"epoch": 2, "global_step": 4}})}, {"fit": _fit()})
    assert [d.field for d in diffs] == ["files.content"]


def test_last_predicates_cover_a_logger_version_folder() -> None:
    config = _config()
    config["checkpoints"][0]["dirpath"] = None
    last = "logs/version_0/checkpoints/last.ckpt"
    lightning = {"fit": _fit(files={last: {"epoch": 2, "global_step": 4}})}
    assert compare(config, lightning, {"fit": _fit(files={last: {"epoch": 1, "global_step": 4}})}) == []
    assert compare(config, lightning, {"fit": _fit(files={last: {"epoch": 3, "global_step": 8}})}) == []
    hparams = "logs/version_0/hparams.yaml"
    diffs = compare(config, {"fit": _fit(files={hparams: "file"})}, {"fit": _fit(files={})})
    assert [d.field for d in diffs] == ["files.only_in_lightning"]


def _callback_state(best: str) -> dict[str, Any]:
    return {
        "dirpath": "ckpt0",
        "best_model_path": best,
        "best_model_score": None,
        "kth_best_model_path": "",
        "kth_value": None,
        "last_model_path": "",
        "current_score": None,
        "best_k_models": {},
    }


def test_restored_metric_decisions_need_a_restored_key_the_callback_uses() -> None:
    config = _config()
    config["checkpoints"][0].update(monitor="val_m", filename=None)
    topk = "ckpt0/epoch=0-step=1.ckpt"
    files = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    lightning = {"resume_mid": _resumed(checkpoints=[_callback_state("")], files=files)}
    stepstone = {
        "resume_mid": _resumed(
            metrics_at_start=["val_m"],
            checkpoints=[_callback_state(topk)],
            files={**files, topk: {"epoch": 0, "global_step": 1}},
        )
    }
    assert compare(config, lightning, stepstone) == []
    config["checkpoints"][0]["monitor"] = "train_m"  # not restored: its decisions must match
    found = {d.field for d in compare(config, lightning, stepstone)}
    assert found == {"checkpoint.best_model_path", "files.only_in_stepstone"}
    config["checkpoints"][0]["filename"] = "{epoch}-{val_m:.2f}"  # the restored key names the file
    assert compare(config, lightning, stepstone) == []
    not_resumed = {"fit": {**stepstone["resume_mid"], "ckpt_path": None}}
    diffs = compare(config, {"fit": {**lightning["resume_mid"], "ckpt_path": None}}, not_resumed)
    assert "checkpoint.best_model_path" in {d.field for d in diffs}


def test_last_at_final_trigger_pairs_templated_names_and_their_last_model_path() -> None:
    config = _config()
    config["checkpoints"][0]["save_last"] = True
    lightning_last, stepstone_last = "ckpt0/epoch=2-last.ckpt", "ckpt0/epoch=1-last.ckpt"
    state = _callback_state("")

    def run(last: str, epoch: int) -> dict[str, Any]:
        files = {last: {"epoch": epoch, "global_step": 4}}
        return _fit(files=files, checkpoints=[{**state, "last_model_path": last}])

    assert compare(config, {"fit": run(lightning_last, 2)}, {"fit": run(stepstone_last, 1)}) == []
    # Two epochs apart, or a different step: not the same final save.
    diffs = compare(config, {"fit": run(lightning_last, 2)}, {"fit": run("ckpt0/epoch=0-last.ckpt", 0)})
    assert {d.field for d in diffs} == {
        "checkpoint.last_model_path",
        "files.only_in_lightning",
        "files.only_in_stepstone",
    }


def test_last_path_of_same_trigger_only_in_a_resumed_run() -> None:
    config = _config()
    base = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    state = _callback_state("")
    lightning = _resumed(
        files={
            **base,
            "ckpt0/last.ckpt": {"epoch": 0, "global_step": 1},
            "ckpt0/last-v1.ckpt": {"epoch": 1, "global_step": 4},
        },
        checkpoints=[{**state, "last_model_path": "ckpt0/last-v1.ckpt"}],
    )
    stepstone = _resumed(
        files={**base, "ckpt0/last.ckpt": {"epoch": 1, "global_step": 4}},
        checkpoints=[{**state, "last_model_path": "ckpt0/last.ckpt"}],
    )
    assert compare(config, {"resume_mid": lightning}, {"resume_mid": stepstone}) == []
    fresh = {"fit": {**lightning, "ckpt_path": None}}, {"fit": {**stepstone, "ckpt_path": None}}
    assert {d.field for d in compare(config, *fresh)} == {
        "checkpoint.last_model_path",
        "files.only_in_lightning",
        "files.content",
    }
    empty = _resumed(files=base, checkpoints=[state])
    named = _resumed(files=base, checkpoints=[{**state, "last_model_path": "ckpt0/last.ckpt"}])
    assert compare(config, {"resume_mid": empty}, {"resume_mid": named}) == []
    assert [d.field for d in compare(config, {"resume_mid": named}, {"resume_mid": empty})] == [
        "checkpoint.last_model_path"
    ]


def test_last_path_of_same_trigger_explains_the_replaced_earlier_last() -> None:
    config = _config()
    source = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    old, new = "ckpt0/2-last.ckpt", "ckpt0/3-last.ckpt"
    state = _callback_state("")
    stop = _fit(
        files={**source, old: {"epoch": 2, "global_step": 3}}, checkpoints=[{**state, "last_model_path": old}]
    )
    after = {old: {"epoch": 2, "global_step": 3}, new: {"epoch": 3, "global_step": 3}}
    lightning = _resumed(files={**source, **after}, checkpoints=[{**state, "last_model_path": new}])
    stepstone = _resumed(files={**source, new: after[new]}, checkpoints=[{**state, "last_model_path": new}])
    assert (
        compare(config, {"stop": stop, "resume_mid": lightning}, {"stop": stop, "resume_mid": stepstone})
        == []
    )
    untracked = {**stop, "checkpoints": [state]}
    diffs = compare(
        config, {"stop": untracked, "resume_mid": lightning}, {"stop": untracked, "resume_mid": stepstone}
    )
    assert [d.field for d in diffs] == ["files.only_in_lightning"]


def test_last_path_of_same_trigger_accepts_a_dangling_earlier_name_and_a_renamed_replaced_last() -> None:
    config = _config()
    source = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    state = _callback_state("")
    current = {"ckpt0/final-6.ckpt": {"epoch": 2, "global_step": 6}}
    lightning = _resumed(
        files={**source, **current}, checkpoints=[{**state, "last_model_path": "ckpt0/final-4.ckpt"}]
    )
    stepstone = _resumed(
        files={**source, **current}, checkpoints=[{**state, "last_model_path": "ckpt0/final-6.ckpt"}]
    )
    assert compare(config, {"resume_mid": lightning}, {"resume_mid": stepstone}) == []
    on_disk = {
        **lightning,
        "files": {**source, **current, "ckpt0/final-4.ckpt": {"epoch": 1, "global_step": 4}},
    }
    diffs = compare(config, {"resume_mid": on_disk}, {"resume_mid": {**stepstone, "files": on_disk["files"]}})
    assert [d.field for d in diffs] == ["checkpoint.last_model_path"]
    # Seed 2652: Lightning's earlier name is still on disk as a link to a deleted file (7): as good as gone.
    broken = {"ckpt0/final-4.ckpt": {"link": "step=4.ckpt", "load_error": "FileNotFoundError"}}
    linked = {**lightning, "files": {**source, **current, **broken}}
    diffs = compare(config, {"resume_mid": linked}, {"resume_mid": stepstone})
    assert [d.field for d in diffs] == ["files.only_in_lightning"]  # a broken link is (7) only with "link"
    config["checkpoints"][0]["save_last"] = "link"
    assert compare(config, {"resume_mid": linked}, {"resume_mid": stepstone}) == []
    config["checkpoints"][0]["save_last"] = True
    # The earlier run's last under Lightning's name (epoch 2) and stepstone's (epoch 1, see 1b); stepstone's
    # resumed run replaced its own.
    stop_l = _fit(
        files={"ckpt0/2-last.ckpt": {"epoch": 2, "global_step": 3}},
        checkpoints=[{**state, "last_model_path": "ckpt0/2-last.ckpt"}],
    )
    stop_s = _fit(
        files={"ckpt0/1-last.ckpt": {"epoch": 1, "global_step": 3}},
        checkpoints=[{**state, "last_model_path": "ckpt0/1-last.ckpt"}],
    )
    new = {"ckpt0/3-last.ckpt": {"epoch": 3, "global_step": 5}}
    now = [{**state, "last_model_path": "ckpt0/3-last.ckpt"}]
    after_l = _resumed(
        files={**source, **new, "ckpt0/2-last.ckpt": {"epoch": 2, "global_step": 3}}, checkpoints=now
    )
    after_s = _resumed(files={**source, **new}, checkpoints=now)
    diffs = compare(config, {"stop": stop_l, "resume_mid": after_l}, {"stop": stop_s, "resume_mid": after_s})
    assert [d.run for d in diffs] == ["stop"] * len(
        diffs
    )  # the stop run's own difference is not explained here


def test_an_earlier_runs_last_left_by_a_refresh_is_filtered_only_unchanged_and_untracked() -> None:
    # Seeds 2673, 2906: stepstone's stop run refreshed last at its end (1), Lightning kept an older one; the
    # resumed run tracks neither, so each framework's stays as it was.
    config = _config()
    config["checkpoints"][0]["last_name"] = "{epoch}-last"
    state = _callback_state("")
    old_l, old_s = (
        {"ckpt0/1-last.ckpt": {"epoch": 1, "global_step": 2}},
        {"ckpt0/3-last.ckpt": {"epoch": 3, "global_step": 3}},
    )
    stop_l = _fit(files=old_l, checkpoints=[{**state, "last_model_path": "ckpt0/1-last.ckpt"}])
    stop_s = _fit(files=old_s, checkpoints=[{**state, "last_model_path": "ckpt0/3-last.ckpt"}])
    source = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    new = {"ckpt0/5-last.ckpt": {"epoch": 5, "global_step": 6}}
    now = [{**state, "last_model_path": "ckpt0/5-last.ckpt"}]

    def chain(
        files_l: dict[str, Any], files_s: dict[str, Any], earlier_s: dict[str, Any] = stop_s
    ) -> list[Any]:
        lightning = {
            "stop": stop_l,
            "resume_mid": _resumed(files={**source, **new, **files_l}, checkpoints=now),
        }
        stepstone = {
            "stop": earlier_s,
            "resume_mid": _resumed(files={**source, **new, **files_s}, checkpoints=now),
        }
        return [(d.run, d.field, d.key) for d in compare(config, lightning, stepstone)]

    assert chain(old_l, old_s) == []
    # Changed since the earlier run: reported.
    changed = {"ckpt0/1-last.ckpt": {"epoch": 1, "global_step": 4}}
    assert chain(changed, old_s) == [("resume_mid", "files.only_in_lightning", "ckpt0/1-last.ckpt")]
    # Tracked by the resumed run (it is the run's last_model_path): reported.
    tracked = _resumed(
        files={**source, **old_l}, checkpoints=[{**state, "last_model_path": "ckpt0/1-last.ckpt"}]
    )
    diffs = compare(
        config,
        {"stop": stop_l, "resume_mid": tracked},
        {"stop": stop_s, "resume_mid": _resumed(files=source)},
    )
    assert ("resume_mid", "files.only_in_lightning") in {(d.run, d.field) for d in diffs}
    # stepstone's earlier last not newer than Lightning's: not (1), so its consequence is reported too.
    stale_s = _fit(
        files={"ckpt0/0-last.ckpt": {"epoch": 0, "global_step": 1}},
        checkpoints=[{**state, "last_model_path": "ckpt0/0-last.ckpt"}],
    )
    found = chain(old_l, {"ckpt0/0-last.ckpt": {"epoch": 0, "global_step": 1}}, stale_s)
    assert ("resume_mid", "files.only_in_lightning", "ckpt0/1-last.ckpt") in found


def test_an_earlier_runs_last_refreshed_under_one_name_is_filtered_only_unchanged_and_untracked() -> None:
    # Seed 6233: both stop runs ended with latest.ckpt, stepstone's refreshed at the end (1); the resumed run writes
    # latest-v1 in both and leaves each framework's latest.ckpt as it was.
    config = _config()
    config["checkpoints"][0]["last_name"] = "latest"
    state = _callback_state("")
    then_l, then_s = {"epoch": 1, "global_step": 6}, {"epoch": 3, "global_step": 8}
    stop_l = _fit(
        files={"ckpt0/latest.ckpt": then_l}, checkpoints=[{**state, "last_model_path": "ckpt0/latest.ckpt"}]
    )
    stop_s = _fit(
        files={"ckpt0/latest.ckpt": then_s}, checkpoints=[{**state, "last_model_path": "ckpt0/latest.ckpt"}]
    )
    new = {
        "manual/mid.ckpt": {"epoch": 0, "global_step": 1},
        "ckpt0/latest-v1.ckpt": {"epoch": 3, "global_step": 12},
    }

    def found(now_l: Any, now_s: Any, last: str = "ckpt0/latest-v1.ckpt") -> list[Any]:
        now = [{**state, "last_model_path": last}]
        lightning = {
            "stop": stop_l,
            "resume_mid": _resumed(files={**new, "ckpt0/latest.ckpt": now_l}, checkpoints=now),
        }
        stepstone = {
            "stop": stop_s,
            "resume_mid": _resumed(files={**new, "ckpt0/latest.ckpt": now_s}, checkpoints=now),
        }
        return [(d.run, d.field, d.key) for d in compare(config, lightning, stepstone)]

    assert found(then_l, then_s) == []
    reported = [("resume_mid", "files.content", "ckpt0/latest.ckpt")]
    # Changed since the earlier run, or tracked by the resumed run: reported.
    assert found(then_l, {"epoch": 3, "global_step": 9}) == reported
    assert ("resume_mid", "files.content", "ckpt0/latest.ckpt") in found(then_l, then_s, "ckpt0/latest.ckpt")


def test_a_dangling_last_link_is_deliberate_only_with_save_last_link() -> None:
    dangling = {"ckpt0/last.ckpt": {"link": "gone.ckpt", "load_error": "FileNotFoundError"}}
    config = _config()  # save_last=True: no link expected, so the dangling one is reported (and no crash)
    diffs = compare(config, {"fit": _fit(files=dangling)}, {"fit": _fit(files={})})
    assert [d.field for d in diffs] == ["files.only_in_lightning"]
    config["checkpoints"][0]["save_last"] = "link"
    assert compare(config, {"fit": _fit(files=dangling)}, {"fit": _fit(files={})}) == []
    loadable = {"ckpt0/last.ckpt": {"link": "a.ckpt", "epoch": 0, "global_step": 1}}
    diffs = compare(config, {"fit": _fit(files=loadable)}, {"fit": _fit(files={})})
    assert [d.field for d in diffs] == ["files.only_in_lightning"]


def test_an_old_last_link_to_a_reused_name_is_deliberate_only_beside_the_current_last_with_that_content() -> (
    None
):
    # Seed 5034: Lightning keeps final-14's link; a later top-k save reused its target's name, so it loads step 24,
    # as final-24 (the current last, in both) does.
    config = _config()
    config["checkpoints"][0].update(save_last="link", last_name="final-{step}")
    current = {
        "ckpt0/a.ckpt": {"epoch": 3, "global_step": 24},
        "ckpt0/final-24.ckpt": {"link": "a.ckpt", "epoch": 3, "global_step": 24},
    }
    old = {"ckpt0/final-14.ckpt": {"link": "a.ckpt", "epoch": 3, "global_step": 24}}
    assert compare(config, {"fit": _fit(files={**current, **old})}, {"fit": _fit(files=current)}) == []
    # Beside no current last of that content, or without save_last="link", it is reported.
    other = {**old, "ckpt0/final-14.ckpt": {"link": "b.ckpt", "epoch": 3, "global_step": 24}}
    diffs = compare(config, {"fit": _fit(files={**current, **other})}, {"fit": _fit(files=current)})
    assert [(d.field, d.key) for d in diffs] == [("files.only_in_lightning", "ckpt0/final-14.ckpt")]
    config["checkpoints"][0]["save_last"] = True
    diffs = compare(config, {"fit": _fit(files={**current, **old})}, {"fit": _fit(files=current)})
    assert [(d.field, d.key) for d in diffs] == [("files.only_in_lightning", "ckpt0/final-14.ckpt")]


def test_a_metrics_file_is_filtered_with_the_pending_validation_that_logged_it() -> None:
    metrics = {"logs/version_1/metrics.csv": "file"}
    lightning = _continued([[1, 0], [1, 1]], val_runs=[], global_step=4, current_epoch=2)
    pending = {**lightning, "val_runs": [[2, 0]], "files": {**lightning["files"], **metrics}}
    assert compare(_config(), {"continue": lightning}, {"continue": pending}) == []
    # The same file without that validation (stepstone logged something Lightning did not): reported.
    unexplained = {**lightning, "files": pending["files"]}
    fields = [d.field for d in compare(_config(), {"continue": lightning}, {"continue": unexplained})]
    assert fields == ["files.only_in_stepstone"]


def test_checkpoints_in_a_logger_folder_are_labelled_by_name() -> None:
    assert file_kind("logs/version_0/metrics.csv") == "logger"
    assert file_kind("logs/version_1/checkpoints/epoch=4-step=25.ckpt") == "topk"
    assert file_kind("logs/version_1/checkpoints/last.ckpt") == "last"
    assert file_kind("logs/version_1/checkpoints/epoch=0-v1.ckpt") == "versioned"


def _with_last(files: dict[str, Any], last: str, resumed: bool = False) -> dict[str, Any]:
    """A stop run (or a run resumed from its mid-epoch file) whose callback's ``last_model_path`` is ``last``."""
    source = {"manual/mid.ckpt": {"epoch": 1, "global_step": 5}}
    state = {**_callback_state(""), "last_model_path": last}
    make = _resumed if resumed else _fit
    return make(files={**source, **files}, checkpoints=[state])


def test_last_at_final_trigger_pairs_versioned_lasts_written_past_the_earlier_final_last() -> None:
    # Both stop runs end with their final last (Lightning's rewritten at train end, one epoch later); the
    # resumed runs do not track it and write a -v1 beside it (seed 899).
    earlier_l, earlier_s = (
        {"ckpt0/2-last.ckpt": {"epoch": 2, "global_step": 6}},
        {"ckpt0/1-last.ckpt": {"epoch": 1, "global_step": 6}},
    )
    lightning = {
        "stop": _with_last(earlier_l, "ckpt0/2-last.ckpt"),
        "resume_mid": _with_last(
            {**earlier_l, "ckpt0/2-last-v1.ckpt": {"epoch": 2, "global_step": 6}},
            "ckpt0/2-last-v1.ckpt",
            True,
        ),
    }
    stepstone = {
        "stop": _with_last(earlier_s, "ckpt0/1-last.ckpt"),
        "resume_mid": _with_last(
            {**earlier_s, "ckpt0/1-last-v1.ckpt": {"epoch": 1, "global_step": 6}},
            "ckpt0/1-last-v1.ckpt",
            True,
        ),
    }
    assert compare(_config(), lightning, stepstone) == []
    # A resumed last at another step is not the same final save.
    other = copy.deepcopy(stepstone)
    other["resume_mid"]["files"]["ckpt0/1-last-v1.ckpt"]["global_step"] = 5
    diffs = compare(_config(), lightning, other)
    assert {(d.field, d.key) for d in diffs} == {
        ("checkpoint.last_model_path", "0"),
        ("files.only_in_lightning", "ckpt0/2-last-v1.ckpt"),
        ("files.only_in_stepstone", "ckpt0/1-last-v1.ckpt"),
    }


def test_last_at_final_trigger_explains_the_earlier_final_last_only_in_lightning_only_unchanged() -> None:
    # The resumed runs write the same new last; the stop runs' final lasts stay on disk (seed 1994).
    earlier_l, earlier_s = (
        {"ckpt0/2-last.ckpt": {"epoch": 2, "global_step": 6}},
        {"ckpt0/1-last.ckpt": {"epoch": 1, "global_step": 6}},
    )
    new = {"ckpt0/3-last.ckpt": {"epoch": 3, "global_step": 9}}
    lightning = {
        "stop": _with_last(earlier_l, "ckpt0/2-last.ckpt"),
        "resume_mid": _with_last({**earlier_l, **new}, "ckpt0/3-last.ckpt", True),
    }
    stepstone = {
        "stop": _with_last(earlier_s, "ckpt0/1-last.ckpt"),
        "resume_mid": _with_last({**earlier_s, **new}, "ckpt0/3-last.ckpt", True),
    }
    assert compare(_config(), lightning, stepstone) == []
    changed = copy.deepcopy(lightning)
    changed["resume_mid"]["files"]["ckpt0/2-last.ckpt"] = {"epoch": 2, "global_step": 7}
    diffs = compare(_config(), changed, stepstone)
    assert [(d.field, d.key) for d in diffs] == [("files.only_in_lightning", "ckpt0/2-last.ckpt")]


def test_last_refreshed_explains_a_versioned_last_past_the_earlier_refreshed_last() -> None:
    # stepstone's stop run refreshed last to final-6 at train end (Lightning kept final-5); the state resumed
    # from names final-5, so stepstone's resumed run writes final-6-v1 where Lightning writes final-6 (seed 1275).
    final_6 = {"epoch": 3, "global_step": 6}
    lightning = {
        "stop": _with_last({"ckpt0/final-5.ckpt": {"epoch": 2, "global_step": 5}}, "ckpt0/final-5.ckpt"),
        "resume_mid": _with_last({"ckpt0/final-6.ckpt": final_6}, "ckpt0/final-6.ckpt", True),
    }
    stepstone = {
        "stop": _with_last({"ckpt0/final-6.ckpt": final_6}, "ckpt0/final-6.ckpt"),
        "resume_mid": _with_last(
            {"ckpt0/final-6.ckpt": final_6, "ckpt0/final-6-v1.ckpt": final_6}, "ckpt0/final-6-v1.ckpt", True
        ),
    }
    assert compare(_config(), lightning, stepstone) == []
    reported = {("checkpoint.last_model_path", "0"), ("files.only_in_stepstone", "ckpt0/final-6-v1.ckpt")}
    # Lightning's stop run had final-6 too: the name was taken alike, the -v1 is not explained.
    taken = copy.deepcopy(lightning)
    taken["stop"]["files"]["ckpt0/final-6.ckpt"] = final_6
    assert {(d.field, d.key) for d in compare(_config(), taken, stepstone) if d.run != "stop"} == reported
    # The -v1 holds another save than Lightning's final-6.
    other = copy.deepcopy(stepstone)
    other["resume_mid"]["files"]["ckpt0/final-6-v1.ckpt"] = {"epoch": 3, "global_step": 7}
    assert {(d.field, d.key) for d in compare(_config(), lightning, other)} == reported
    # Not resumed: nothing of the earlier run explains it.
    fresh_l = {"stop": lightning["stop"], "resume_mid": {**lightning["resume_mid"], "ckpt_path": None}}
    fresh_s = {"stop": stepstone["stop"], "resume_mid": {**stepstone["resume_mid"], "ckpt_path": None}}
    assert {(d.field, d.key) for d in compare(_config(), fresh_l, fresh_s)} >= reported


def test_a_top_k_file_replaced_after_an_epoch_end_restart_is_filtered_only_if_stepstone_had_it() -> None:
    config = _two_batch_epochs()
    config["checkpoints"][0].update(save_top_k=1, save_last=None)
    earlier = {"ckpt0/epoch=0-step=1.ckpt": {"epoch": 0, "global_step": 1}}
    fit = _fit(files=earlier)
    empty = _continued([], global_step=2, current_epoch=3)
    empty["files"] = {**empty["files"], **earlier}
    whole = _continued([[1, 0], [1, 1]], global_step=3, current_epoch=3)
    whole["files"] = {**whole["files"], "ckpt0/epoch=1-step=3.ckpt": {"epoch": 1, "global_step": 3}}
    callback = {"dirpath": "ckpt0", "best_model_score": None, "kth_value": None, "current_score": None}
    callback.update(kth_best_model_path="", last_model_path="", best_k_models={})
    empty["checkpoints"] = [{**callback, "best_model_path": "ckpt0/epoch=0-step=1.ckpt"}]
    whole["checkpoints"] = [{**callback, "best_model_path": "ckpt0/epoch=1-step=3.ckpt"}]
    # stepstone's save at step 3 (after the resumed step 2) replaced its top-1 file of step 1.
    assert compare(config, {"fit": fit, "continue": empty}, {"fit": fit, "continue": whole}) == []
    # Not when stepstone never had that file.
    fit_without = _fit(files={})
    diffs = compare(config, {"fit": fit, "continue": empty}, {"fit": fit_without, "continue": whole})
    assert [d.field for d in diffs if d.run == "continue"] == ["files.only_in_lightning"]
    # Nor when the callback keeps every file (nothing is replaced).
    config["checkpoints"][0]["save_top_k"] = -1
    diffs = compare(config, {"fit": fit, "continue": empty}, {"fit": fit, "continue": whole})
    assert [d.field for d in diffs] == ["files.only_in_lightning"]


def test_a_top_k_file_of_the_trainers_default_callback_replaced_after_an_epoch_end_restart_is_filtered() -> (
    None
):
    # Seed 3467: no ModelCheckpoint configured, so the Trainer's default one (top-1 in "checkpoints") saves.
    config = _two_batch_epochs()
    config["checkpoints"] = []
    earlier = {"checkpoints/epoch=0-step=1.ckpt": {"epoch": 0, "global_step": 1}}
    later = {"checkpoints/epoch=1-step=3.ckpt": {"epoch": 1, "global_step": 3}}
    fit = _fit(files=earlier)
    empty = _continued([], global_step=2, current_epoch=3)
    empty["files"] = {**empty["files"], **earlier}
    whole = _continued([[1, 0], [1, 1]], global_step=3, current_epoch=3)
    whole["files"] = {**whole["files"], **later}
    callback = {"dirpath": "checkpoints", "best_model_score": None, "kth_value": None, "current_score": None}
    callback.update(kth_best_model_path="", last_model_path="", best_k_models={})
    empty["checkpoints"] = [{**callback, "best_model_path": next(iter(earlier))}]
    whole["checkpoints"] = [{**callback, "best_model_path": next(iter(later))}]
    assert compare(config, {"fit": fit, "continue": empty}, {"fit": fit, "continue": whole}) == []
    # A configured callback elsewhere: nothing saves top-k files in "checkpoints", so the file is reported.
    config = _two_batch_epochs()
    config["checkpoints"][0].update(dirpath="ckpt0", save_top_k=1, save_last=None)
    diffs = compare(config, {"fit": fit, "continue": empty}, {"fit": fit, "continue": whole})
    assert ("continue", "files.only_in_lightning") in {(d.run, d.field) for d in diffs}


def test_the_relabelled_batch_after_the_last_epoch_is_filtered_only_when_no_epoch_is_left() -> None:
    # Seed 4899: resumed from a file of the last epoch's end (max_epochs=1); stepstone has nothing left to train.
    epoch_end = {"ckpt0/epoch=0-step=2.ckpt": {"epoch": 0, "global_step": 2}}
    source = "ckpt0/epoch=0-step=2.ckpt"
    relabelled = _continued([[0, 2]], ckpt_path=source, files=epoch_end, global_step=3, current_epoch=1)
    nothing = _continued([], ckpt_path=source, files=epoch_end, global_step=2, current_epoch=1)
    config = _two_batch_epochs(-1)
    config["trainer"]["max_epochs"] = 1
    assert compare(config, {"resume_file": relabelled}, {"resume_file": nothing}) == []
    # With an epoch left, training nothing is not excused.
    config["trainer"]["max_epochs"] = 3
    fields = [d.field for d in compare(config, {"resume_file": relabelled}, {"resume_file": nothing})]
    assert "trained.batches" in fields


def test_the_relabelled_batch_without_max_steps_is_filtered_only_after_an_epoch_end_file() -> None:
    # A file written in on_train_epoch_end of epoch 0 ("epoch" 0): Lightning trains batch_idx=n of epoch 0 first.
    epoch_end = {"ckpt0/epoch=0-step=2.ckpt": {"epoch": 0, "global_step": 2}}
    source = "ckpt0/epoch=0-step=2.ckpt"
    relabelled = _continued([[0, 2], [1, 0], [1, 1]], ckpt_path=source, files=epoch_end, global_step=5)
    next_epoch = _continued([[1, 0], [1, 1]], ckpt_path=source, files=epoch_end, global_step=4)
    no_max_steps = _two_batch_epochs(-1)
    assert compare(no_max_steps, {"resume_file": relabelled}, {"resume_file": next_epoch}) == []
    # Without max_steps, Lightning's empty epoch is not excused.
    empty = _continued([[1, 0], [1, 1]], ckpt_path=source, files=epoch_end, global_step=4, current_epoch=3)
    restarted = _continued(
        [[0, 0], [0, 1]], ckpt_path=source, files=epoch_end, global_step=4, current_epoch=3
    )
    fields = [d.field for d in compare(no_max_steps, {"resume_file": empty}, {"resume_file": restarted})]
    assert "trained.batches" in fields
