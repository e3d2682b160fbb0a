"""The ENCODE benchmark's pieces: the published model of each set, the shipped config and its keys."""

from pathlib import Path

import pytest
import yaml

from biocnn.deepbind import zoo
from biocnn.deepbind.config import load_deepbind_config
from biocnn.errors import ConfigError, InputError

ROOT = Path(__file__).resolve().parents[1]
DB = ROOT.parent / "shared" / "data" / "deepbind" / "db"
CONFIG = ROOT / "configs" / "deepbind_encode.yaml"


@pytest.mark.skipif(not (DB / "db.tsv").is_file(), reason=f"the DeepBind release is not at {DB} (shared data absent)")
def test_each_encode_set_finds_its_published_chipseq_model_in_the_real_index():
    index = zoo.read_index(DB)
    expected = {
        "CTCFL_K562_CTCFL_(SC-98982)_HudsonAlpha_B.seq.gz": "D00753.001",  # antibody with an underscore
        "GABPA_GM12878_GABP_HudsonAlpha_AC.seq.gz": "D00409.004",  # 4 deprecated GABP rows, other cells
        "REST_GM12878_NRSF_HudsonAlpha_B.seq.gz": "D00799.001",
        "SP1_GM12878_SP1_HudsonAlpha_B.seq.gz": "D00650.007",
    }
    for name, model_id in expected.items():
        assert zoo.chipseq_model(index, name) == model_id
    # Only a deprecated model (no parameter file) for this cell line; a lab with no model at all.
    for name in ("REST_K562_NRSF_HudsonAlpha_B.seq.gz", "SP1_GM12878_SP1_Stanford_B.seq.gz"):
        with pytest.raises(InputError, match="no published ChIP-seq model"):
            zoo.chipseq_model(index, name)
    with pytest.raises(InputError, match="not an ENCODE set name"):
        zoo.chipseq_model(index, "SP1_B.seq.gz")


def test_the_encode_config_loads_and_an_unknown_or_bad_key_names_itself_and_the_file(tmp_path):
    cfg = load_deepbind_config(CONFIG)
    assert cfg.model.ensemble >= 1
    data = yaml.safe_load(CONFIG.read_text())
    for section, key, value, message in (
        ("model", "ensembles", 3, "ensembles"),
        ("model", "ensemble", 0, "ensemble"),
    ):
        bad = {**data, section: {**data[section], key: value}}
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=message) as err:
            load_deepbind_config(path)
        assert "bad.yaml" in str(err.value)
