"""A model is data, never code: what in a model folder would make transformers run code,
found by reading the files before transformers sees them (issue 35)."""

import json
import shutil

import pytest

from meldflow import MeldflowError
from meldflow.model_cache.data_only import code_in_model, load_florence_dir
from meldflow.model_cache.snapshots import cached_snapshot
from meldflow.settings import TINY_FLORENCE


@pytest.fixture
def model_copy(florence_home, tmp_path):
    """A plain copy of the staged tiny Florence-2 (links resolved), to poison."""
    snap = cached_snapshot(florence_home, TINY_FLORENCE, "main")
    out = tmp_path / "model"
    shutil.copytree(snap, out, symlinks=False)
    return out


def edit_json(path, **keys):
    path.write_text(json.dumps(json.loads(path.read_text()) | keys))


def test_the_tiny_model_as_staged_is_data_only(model_copy):
    assert code_in_model(model_copy) is None


@pytest.mark.parametrize("poison, found", [
    (lambda m: edit_json(m / "config.json", auto_map={"AutoModel": "m.Evil"}),
     "config.json: auto_map"),
    (lambda m: edit_json(m / "config.json", _attn_implementation_internal="org/kernel"),
     "config.json: _attn_implementation_internal = 'org/kernel'"),
    (lambda m: edit_json(m / "config.json", text_config={"_attn_implementation": "a/b@v1"}),
     "config.json: text_config._attn_implementation = 'a/b@v1'"),
    (lambda m: edit_json(m / "config.json", experts_implementation={"": "org/moe"}),
     "config.json: experts_implementation"),
    (lambda m: edit_json(m / "config.json", use_kernels=True), "config.json: use_kernels"),
    (lambda m: edit_json(m / "tokenizer_config.json", auto_map={"AutoTokenizer": ["t.T", None]}),
     "tokenizer_config.json: auto_map"),
    (lambda m: edit_json(m / "processor_config.json",
                         image_processor={"auto_map": {"AutoImageProcessor": "i.I"}}),
     "processor_config.json: image_processor.auto_map"),
    (lambda m: (m / "custom.py").write_text("import os\n"), "custom.py: Python code"),
    (lambda m: (m / "sub").mkdir() or (m / "sub" / "w.pt").write_bytes(b"\x80\x04."),
     "sub/w.pt: pickle weights"),
    (lambda m: (m / "config.json").write_text("{not json"), "config.json: unreadable JSON"),
], ids=["auto_map", "kernel", "nested-kernel", "experts", "use_kernels", "tokenizer",
        "image-processor", "python", "pickle", "unreadable"])
def test_what_would_run_code_is_named_by_file_and_key(model_copy, poison, found):
    poison(model_copy)
    assert (code_in_model(model_copy) or "").startswith(found)


def test_a_local_implementation_name_is_not_code(model_copy):
    edit_json(model_copy / "config.json", _attn_implementation_internal="sdpa")
    assert code_in_model(model_copy) is None


def test_loading_refuses_before_transformers_reads_the_folder(model_copy):
    edit_json(model_copy / "config.json", auto_map={"AutoModel": "modeling_x.X"})
    with pytest.raises(MeldflowError, match=r"would run code when loaded \(config.json: "
                                            r"auto_map\)"):
        load_florence_dir(model_copy)


def test_the_clean_copy_loads_with_the_pil_image_processor(model_copy):
    model, processor = load_florence_dir(model_copy)
    assert type(model).__name__ == "Florence2ForConditionalGeneration"
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
