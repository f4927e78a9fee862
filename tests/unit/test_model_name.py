"""The reported model name: a hub id's pinned revision is dropped, a local path keeps its name."""

from __future__ import annotations

from endorm_server.config import Settings


def test_a_pinned_hub_id_is_reported_without_its_revision():
    assert Settings(model="Qwen/Qwen2.5-7B-Instruct@a09a35458c702b33eeacc393d103063234e8bc28").model_name == (
        "Qwen2.5-7B-Instruct"
    )
    assert Settings(model="Qwen/Qwen2.5-7B-Instruct").model_name == "Qwen2.5-7B-Instruct"


def test_a_local_directory_keeps_its_whole_name(tmp_path):
    model = tmp_path / "smol@v2"
    model.mkdir()
    assert Settings(model=str(model)).model_name == "smol@v2"


def test_a_served_name_wins():
    assert Settings(model="org/name@main", served_model_name="rm").model_name == "rm"
