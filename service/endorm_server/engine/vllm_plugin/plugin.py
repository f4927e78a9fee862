"""vLLM general plugin: registers ``EndoReward<Arch>`` for every causal LM.

Loaded through the ``vllm.general_plugins`` entry point in every engine
process (including spawned workers). Registration is lazy (a module path
string), so nothing is imported until vLLM resolves the architecture.
"""

from __future__ import annotations

from endorm_server.engine.vllm_plugin.reward_models import CLASS_PREFIX

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def reward_architecture(arch: str) -> str:
    return CLASS_PREFIX + arch


def register() -> None:
    from vllm import ModelRegistry

    for arch in list(ModelRegistry.get_supported_archs()):
        if arch.endswith(_CAUSAL_SUFFIXES) and not arch.startswith(CLASS_PREFIX):
            name = reward_architecture(arch)
            if name not in ModelRegistry.get_supported_archs():
                ModelRegistry.register_model(name, f"endorm_server.engine.vllm_plugin.reward_models:{name}")
