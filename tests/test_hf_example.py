"""The transformers example on CPU (no CUDA graphs there); skipped without leakcheck[hf]."""

from __future__ import annotations

import json
import textwrap

import pytest
from typer.testing import CliRunner

from leakcheck.cli import app

pytest.importorskip("transformers")

SMALL = "{variant: %s, dtype: float32, hidden: 128, layers: 2, heads: 4, kv_heads: 2, vocab: 1000, prefill_tokens: 16}"


@pytest.mark.parametrize("variant,code", [("seed", 1), ("fixed", 0)])
def test_hf_llama_example(tmp_path, variant, code):
    config = tmp_path / "hf.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        device: cpu
        runner:
          factory: leakcheck.examples.hf_llama:build
          args: {SMALL % variant}
        warmup:
          - call: execute_model
        """)
    )
    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["run", str(config), "--json", str(out)])
    assert result.exit_code == code, result.output
    report = json.loads(out.read_text())
    owners = {o["path"] for o in report["owners"]}
    if variant == "seed":
        assert owners == {
            "runner.model_state",
            "runner.pooling_runner",
            "runner.cudagraph_manager",
            "runner.hidden_cache",
        }
        model = next(g for g in report["shared"] if len(g["owners"]) == 3)
        assert set(model["owners"]) == {"runner.model_state", "runner.pooling_runner", "runner.cudagraph_manager"}
        assert any(s["example"].endswith("model.embed_tokens.weight") for s in report["storages"])
    else:
        assert owners == set() and report["leaked_bytes"] == 0
