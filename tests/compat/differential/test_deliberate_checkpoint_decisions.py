"""The deliberate differences that reach ModelCheckpoint's decisions in a resumed run are filtered only where
they apply (``compat.differential.deliberate_checkpoint_decisions``)."""

from __future__ import annotations

from typing import Any

from compat.differential import fake_observations as fake
from compat.differential.compare import compare


def test_a_whole_epoch_mean_in_checkpoint_scores_and_names_is_filtered_only_with_the_exact_values() -> None:
    config = fake.config()
    config["data"]["n_train"], config["trainer"]["limit_train_batches"] = 3, None
    config["trainer"]["accumulate_grad_batches"] = 1
    config["logging"] = {"train_on_step": False, "train_on_epoch": True}
    config["train_table"] = [0.25, 0.5, 0.75, 0.125]  # epoch 1 runs at steps 3, 4, 5: 0.125, 0.25, 0.5
    config["checkpoints"][0].update(monitor="train_m", filename="{step}-{train_m:.3f}", save_last=None)
    trained = [[1, 1, [2, 3]], [1, 2, [4, 5]]]
    whole, after = (0.125 + 0.25 + 0.5) / 3, (0.25 + 0.5) / 2

    def run(mean: float, name: str, score: float | None = None) -> dict[str, Any]:
        path, score = f"ckpt0/{name}.ckpt", mean if score is None else score
        callback = {
            "dirpath": "ckpt0",
            "best_model_path": path,
            "best_model_score": score,
            "kth_best_model_path": path,
            "kth_value": score,
            "last_model_path": "",
            "current_score": score,
            "best_k_models": {path: score},
        }
        files = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}, path: {"epoch": 1, "global_step": 6}}
        obs = fake.resumed(
            trained=trained, callback_metrics={"train_m": mean}, checkpoints=[callback], files=files
        )
        return {"resume_mid": obs}

    assert compare(config, run(after, "6-0.375"), run(whole, "6-0.292-v1")) == []
    # A score or a name that is not the other mean is reported.
    wrong_name = compare(config, run(after, "6-0.375"), run(whole, "6-0.300"))
    assert {d.field for d in wrong_name} >= {"checkpoint.best_model_path", "files.only_in_stepstone"}
    assert "checkpoint.best_model_score" not in {d.field for d in wrong_name}
    # Monitoring another key, only the names may carry the means; the scores must agree.
    config["checkpoints"][0]["monitor"] = "val_m"
    assert compare(config, run(after, "6-0.375", 0.5), run(whole, "6-0.292", 0.5)) == []
    fields = {d.field for d in compare(config, run(after, "6-0.375", 0.5), run(whole, "6-0.292", 0.25))}
    assert "checkpoint.current_score" in fields and "checkpoint.best_model_path" not in fields
    config["checkpoints"][0]["monitor"] = "train_m"
    # Without the whole-epoch mean in callback_metrics, nothing is excused.
    same_metrics = run(whole, "6-0.292")
    same_metrics["resume_mid"]["callback_metrics"] = {"train_m": after}
    assert {"checkpoint.current_score", "files.only_in_stepstone"} <= {
        d.field for d in compare(config, run(after, "6-0.375"), same_metrics)
    }


def test_a_resumed_epochs_whole_mean_kept_into_the_next_epoch_is_filtered_only_with_the_exact_values() -> (
    None
):
    # Seeds 2127, 2375: resumed in epoch 1 and trained on into epoch 2, so the callback_metrics agree at the end,
    # but triggers in epoch 2 scored and named with epoch 1's mean (stepstone's covers the whole epoch).
    config = fake.config()
    config["data"]["n_train"], config["trainer"]["limit_train_batches"] = 3, None
    config["trainer"]["accumulate_grad_batches"] = 1
    config["logging"] = {"train_on_step": False, "train_on_epoch": True}
    config["train_table"] = [0.25, 0.5, 0.75, 0.125]  # epoch 1 runs at steps 3, 4, 5: 0.125, 0.25, 0.5
    config["checkpoints"][0].update(monitor="train_m", filename="{step}-{train_m:.3f}", save_last=None)
    trained = [[1, 1, [2, 3]], [1, 2, [4, 5]], [2, 0, [0, 1]]]
    whole, after = (0.125 + 0.25 + 0.5) / 3, (0.25 + 0.5) / 2

    def run(name: str, score: float, pairs: list[list[Any]] = trained) -> dict[str, Any]:
        path = f"ckpt0/{name}.ckpt"
        callback = {
            "dirpath": "ckpt0",
            "best_model_path": path,
            "best_model_score": score,
            "kth_best_model_path": path,
            "kth_value": score,
            "last_model_path": "",
            "current_score": score,
            "best_k_models": {path: score},
        }
        files = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}, path: {"epoch": 2, "global_step": 7}}
        obs = fake.resumed(
            trained=pairs, callback_metrics={"train_m": 0.75}, checkpoints=[callback], files=files
        )
        return {"resume_mid": obs}

    assert compare(config, run("7-0.375", after), run("7-0.292", whole)) == []
    # A score or a name that is not the other mean is reported.
    wrong = {d.field for d in compare(config, run("7-0.375", after), run("7-0.300", 0.3))}
    assert {"checkpoint.best_model_score", "checkpoint.best_model_path", "files.only_in_stepstone"} <= wrong
    # Ended inside the resumed epoch with equal callback_metrics: nothing explains other means.
    inside = trained[:2]
    fields = {d.field for d in compare(config, run("7-0.375", after, inside), run("7-0.292", whole, inside))}
    assert {"checkpoint.best_model_score", "files.only_in_stepstone"} <= fields


def test_checkpoint_decisions_after_a_pending_validation_are_filtered_only_before_lightnings_first() -> None:
    config = fake.config()
    config["checkpoints"][0].update(monitor="val_m", filename="{step}", save_last=None)

    def run(saved_at: int, val_runs: list[list[int]]) -> dict[str, Any]:
        path = f"ckpt0/step={saved_at}.ckpt"
        callback = {
            "dirpath": "ckpt0",
            "best_model_path": path,
            "best_model_score": 0.5,
            "kth_best_model_path": path,
            "kth_value": 0.5,
            "last_model_path": "",
            "current_score": 0.5,
            "best_k_models": {path: 0.5},
        }
        files = {
            "manual/mid.ckpt": {"epoch": 0, "global_step": 1},
            path: {"epoch": 1, "global_step": saved_at},
        }
        return {"resume_mid": fake.resumed(val_runs=val_runs, checkpoints=[callback], files=files)}

    lightning = run(6, [[4, 1], [6, 2]])
    # stepstone's pending validation at the resumed step 1 published val_m: it saved at step 4, Lightning could not.
    assert compare(config, lightning, run(4, [[1, 0], [4, 1], [6, 2]])) == []
    # Without that validation, or saved after Lightning's first validation, nothing is excused.
    assert compare(config, lightning, run(4, [[4, 1], [6, 2]])) != []
    assert compare(config, lightning, run(5, [[1, 0], [4, 1], [6, 2]])) != []
    # Nor in a callback that does not use the validation key.
    config["checkpoints"][0]["monitor"] = "train_m"
    assert compare(config, lightning, run(4, [[1, 0], [4, 1], [6, 2]])) != []


def test_a_last_link_to_a_save_named_after_a_pending_validation_is_filtered_only_if_it_points_at_that_save() -> (
    None
):
    # Seed 4218: the step-4 trigger formats val_m into the name; stepstone has the pending validation's value,
    # Lightning writes 0, and each framework's last.ckpt links to its own file of that step.
    config = fake.config()
    config["checkpoints"][0].update(monitor=None, filename="{step}-{val_m}", save_last="link", save_top_k=-1)
    mid = {"manual/mid.ckpt": {"epoch": 0, "global_step": 1}}
    both = {"ckpt0/step=4-val_m=0.5.ckpt": {"epoch": 1, "global_step": 4}}  # an earlier run's file, in both

    def run(name: str, link: str, val_runs: list[list[int]]) -> dict[str, Any]:
        files = {
            **mid,
            **both,
            f"ckpt0/{name}": {"epoch": 1, "global_step": 4},
            "ckpt0/last.ckpt": {"link": link, "epoch": 1, "global_step": 4},
        }
        return {"resume_mid": fake.resumed(val_runs=val_runs, files=files)}

    lightning = run("step=4-val_m=0.ckpt", "step=4-val_m=0.ckpt", [[4, 1]])
    pending = [[1, 0], [4, 1]]
    assert (
        compare(config, lightning, run("step=4-val_m=0.375-v1.ckpt", "step=4-val_m=0.375-v1.ckpt", pending))
        == []
    )
    # A link to another file than that save, or without the pending validation, is reported.
    elsewhere = run("step=4-val_m=0.375-v1.ckpt", "step=4-val_m=0.5.ckpt", pending)
    assert [(d.field, d.key) for d in compare(config, lightning, elsewhere)] == [
        ("files.content", "ckpt0/last.ckpt")
    ]
    no_validation = run("step=4-val_m=0.375-v1.ckpt", "step=4-val_m=0.375-v1.ckpt", [[4, 1]])
    assert ("files.content", "ckpt0/last.ckpt") in {
        (d.field, d.key) for d in compare(config, lightning, no_validation)
    }


def _callback(path: str, score: Any) -> dict[str, Any]:
    return {
        "dirpath": "ckpt0",
        "best_model_path": path,
        "best_model_score": score,
        "kth_best_model_path": path,
        "kth_value": "inf" if score is None else score,
        "last_model_path": "",
        "current_score": score,
        "best_k_models": {path: score} if path else {},
    }


def test_a_trigger_seeing_the_finished_epoch_ends_mean_is_filtered_only_before_lightnings_first_epoch_end() -> (
    None
):
    # Seeds 4078, 4559: resumed from a file written after epoch 0's last batch, stepstone finishes epoch 0's end and
    # publishes its mean (NaN here: a NaN was logged, scored as the worst value 'inf' as Lightning scores it); a step
    # trigger saves a top-k file with it. Lightning has no epoch mean until epoch 1 ends and saves nothing.
    config = fake.config()
    config["data"]["n_train"], config["trainer"]["limit_train_batches"] = 3, None
    config["trainer"].update(accumulate_grad_batches=1, max_steps=-1)  # not the epoch-end restart (6)
    config["logging"] = {"train_on_step": True, "train_on_epoch": True}
    config["checkpoints"][0].update(
        monitor="train_m_epoch",
        mode="min",
        filename="best",
        save_last=None,
        save_top_k=1,
        every_n_train_steps=None,
    )
    trained = [[1, 0, [0, 1]], [1, 1, [2, 3]], [1, 2, [4, 5]]]

    def run(saved_at: int | None, pairs: list[list[Any]] = trained, resumed_at: int = 3) -> dict[str, Any]:
        files: dict[str, Any] = {"manual/mid.ckpt": {"epoch": 0, "global_step": resumed_at}}
        callback = _callback("", None)
        if saved_at is not None:
            files["ckpt0/best-v1.ckpt"] = {"epoch": 1, "global_step": saved_at}
            callback = _callback("ckpt0/best-v1.ckpt", "inf")
        return {"resume_mid": fake.resumed(trained=pairs, files=files, checkpoints=[callback])}

    assert compare(config, run(None), run(4)) == []
    reported = {"checkpoint.best_model_path", "checkpoint.best_k_models", "files.only_in_stepstone"}
    # Saved after the last step of Lightning's first epoch after the resume (3 + 3), nothing is excused.
    assert reported <= {d.field for d in compare(config, run(None), run(7))}
    # Seed 6510: a step trigger in that span decided with the mean, its file since replaced by a later, better save.
    config["checkpoints"][0]["every_n_train_steps"] = 2  # fires at step 4 and 6
    assert compare(config, run(None), run(7)) == []
    config["checkpoints"][0]["every_n_train_steps"] = 7  # not before step 7
    assert reported <= {d.field for d in compare(config, run(None), run(7))}
    config["checkpoints"][0]["every_n_train_steps"] = None
    # Resumed inside epoch 0 (Lightning's first batch is [0, 2]): no epoch end was finished.
    inside = [[0, 2, [4, 5]], [1, 0, [0, 1]], [1, 1, [2, 3]]]
    assert reported <= {d.field for d in compare(config, run(None, inside, 2), run(4, inside, 2))}
    # A callback that uses no epoch-mean key, or no epoch mean logged at all, explains nothing either.
    config["checkpoints"][0]["monitor"] = "val_m"
    assert reported <= {d.field for d in compare(config, run(None), run(4))}
    config["checkpoints"][0]["monitor"] = "train_m_epoch"
    config["logging"]["train_on_epoch"] = False
    assert reported <= {d.field for d in compare(config, run(None), run(4))}
