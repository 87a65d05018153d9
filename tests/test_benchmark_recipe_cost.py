"""benchmarks/recipe_cost.py: a stage's cost and gates from a known metrics.jsonl."""

import importlib.util
import json
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location("recipe_cost", Path(__file__).parents[1] / "benchmarks" / "recipe_cost.py")
recipe_cost = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(recipe_cost)


def test_stage_cost_known_answer(tmp_path, capsys):
    stage = tmp_path / "encoders"
    stage.mkdir()
    rows = [{"step": 25, "step_time": 2.0, "loss": 1.0}, {"step": 50, "step_time": 1.0, "loss": 0.5},
            {"step": 50, "gate/l_v_r": 0.5, "gate/seconds": 30.0},
            {"step": 100, "step_time": 1.0, "loss": 0.2},
            {"step": 100, "gate/l_v_r": 0.96, "gate/e_v_acc": 0.97, "gate/seconds": 90.0}]
    (stage / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    c = recipe_cost.stage_cost(stage)
    # 25 steps at 2 s + 25 at 1 s + 50 at 1 s = 125 s; gates 120 s
    assert c == {"stage": "encoders", "steps": 100, "median_step_s": 1.0, "train_minutes": pytest.approx(2.1),
                 "gate_minutes": 2.0, "last_gate_step": 100, "gates": {"gate/l_v_r": 0.96, "gate/e_v_acc": 0.97}}
    assert recipe_cost.stage_cost(tmp_path / "missing") is None
    recipe_cost.main([str(tmp_path), "--stages", "encoders,audio"])
    out = capsys.readouterr().out.splitlines()
    assert out[2] == "| encoders | 100 | 1.0 | 2.1 | 2.0 | l_v_r 0.96, e_v_acc 0.97 |" and len(out) == 4
