"""`autocomp inspect`: what autocomp sees in a model, and what it leaves out."""

from __future__ import annotations

import json
import subprocess
import sys

import autocomp
from autocomp.space import SearchSpace


def test_inspect_resnet20_lists_every_layer_with_its_actions() -> None:
    seen = autocomp.inspect(model="resnet20", space="joint", input_shape=(3, 32, 32), num_classes=10)
    names = [r.name for r in seen.layers]
    assert names[0] == "conv1" and names[-1] == "fc" and len(names) == 22  # 19 convs, 2 shortcut convs, fc
    # 3 to 16 of the stem's 16 channels; first conv at 8 bits and whole (the joint space's rule)
    assert seen.layers[0].actions == {"keep_ratio": "0.188-1 (14 values)", "bits": "fixed", "rank_ratio": "fixed"}
    assert seen.layers[0].shape == "3 -> 16, 3x3 kernel"
    second = seen.layers[2]  # layers.0.conv2 adds into the stem's group: decided with it
    assert second.unit == "conv1" and second.actions["keep_ratio"] == "with conv1"
    assert "never pruned" in seen.layers[-1].note
    assert sum(r.macs for r in seen.layers) == seen.totals["macs"]
    assert seen.left_out == []  # batch norms are part of the pruned groups


def test_inspect_names_what_it_leaves_out() -> None:
    from torch import nn

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.attention = nn.MultiheadAttention(32, 4, batch_first=True)  # unfused: its projections are layers
            self.odd = nn.MultiheadAttention(32, 4, batch_first=True, add_bias_kv=True)  # cannot be unfused
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            tokens = self.embed(x.reshape(x.shape[0], 8, 8))
            tokens = self.attention(tokens, tokens, tokens)[0]
            return self.fc(self.odd(tokens, tokens, tokens)[0].mean(1))

    from autocomp.inspection import inspect_model

    seen = inspect_model(Attention(), (1, 8, 8), SearchSpace.load("prune"))
    left = {r.module: r for r in seen.left_out}
    assert "attention" not in left and "attention.q_proj" in {r.name for r in seen.layers}
    assert "odd" in left and left["odd"].params == 32 * 96 + 96 + 2 * 32
    assert "add_bias_kv" in left["odd"].reason
    assert "odd.out_proj" in left and "applied by its parent" in left["odd.out_proj"].reason
    assert seen.totals["params"] == sum(p.numel() for p in Attention().parameters())


def test_inspect_on_the_command_line(tmp_path) -> None:
    table = subprocess.run([sys.executable, "-m", "autocomp.cli", "inspect", "--model", "digits_cnn"],
                           capture_output=True, text=True, timeout=120, check=True).stdout
    assert "features.0.0" in table and "channel groups" in table
    out = subprocess.run([sys.executable, "-m", "autocomp.cli", "inspect", "--model", "resnet20", "--input-shape",
                          "3,32,32", "--json"], capture_output=True, text=True, timeout=120, check=True).stdout
    layers = json.loads(out)["layers"]
    assert len(layers) == 22 and layers[-1]["name"] == "fc"
    bad = subprocess.run([sys.executable, "-m", "autocomp.cli", "inspect", "--input-shape", "3x32"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 2 and "--input-shape" in bad.stderr and "Traceback" not in bad.stderr



def test_a_training_only_head_is_named_with_its_parameters(aux_model_file) -> None:
    import torchvision

    from autocomp.cost import measure_cost
    from autocomp.graph import idle_modules
    from autocomp.inspection import inspect_model
    from autocomp.models import build_model

    model = build_model(f"{aux_model_file}:net", num_classes=10).train()
    idle_params = 8 * 16 + 16 + 16 * 10 + 10
    assert idle_modules(model, (1, 8, 8)) == {"aux": idle_params}
    assert model.training and all(p.requires_grad for p in model.parameters())  # left as it was
    assert idle_modules(build_model("resnet20"), (3, 32, 32)) == {}
    googlenet = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=False)
    idle = idle_modules(googlenet, (3, 64, 64))
    assert set(idle) == {"aux1", "aux2"}
    assert idle["aux1"] == sum(p.numel() for p in googlenet.aux1.parameters())

    seen = inspect_model(model, (1, 8, 8), SearchSpace.load("prune"))
    left = {r.module: r for r in seen.left_out}
    assert set(left) == {"aux"} and left["aux"].params == idle_params and "never runs in eval" in left["aux"].reason
    # still counted, as the packed model stores them: the cost model agrees with an independent count
    assert seen.totals["params"] == measure_cost(model, (1, 8, 8)).params == sum(p.numel() for p in model.parameters())
