"""The tester's channel for models, optimisers, records and objects of the tests (``grading/THREAT_MODEL.md``).

Each test runs the tester's side (``tester._Session``, as ``python -I tester.py`` runs it) in this process and
the kernel's side (``channel.serve``) in a thread over a second namespace — the student's — connected by the same
Unix socket the grader uses, without Jupyter or the jail: what is tested is what crosses and what comes back.
``test_grading.py`` grades the course's masters through the real tester and asserts that no test is left in the
kernel.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import types

import pytest
import torch

from text3d_edu.grading import channel as kernel_channel
from text3d_edu.grading import tester


class Pair:
    """A tester namespace and a 'kernel' namespace; ``run(source)`` runs a locked cell as the grader would."""

    def __init__(self, folder, student_source: str, names: list[str]):
        self.folder, self.cells = folder, 0
        self.read, self.write = os.pipe()
        self.session = tester._Session({"names": names, "socket": str(folder / "channel.sock")},
                                       tester._load_channel(), self.read)
        self.main = types.ModuleType("__main__")  # the kernel's __main__, where its unpickling finds setup classes
        self.kernel = self.main.__dict__
        exec(compile(student_source, "<student>", "exec"), self.kernel)  # noqa: S102 (the test's own code)

    def run(self, source: str, setup: bool = False, in_kernel_too: bool = False) -> dict:
        """A locked cell: run in the tester (the student's names proxied); a setup/run cell runs in the kernel too."""
        if in_kernel_too:
            exec(compile(source, "<kernel>", "exec"), self.kernel)  # noqa: S102
        server = threading.Thread(target=kernel_channel.serve, args=(str(self.folder / "channel.sock"), self.kernel))
        server.start()
        self.cells += 1
        report = self.session.run(self.cells, source, setup)
        server.join(timeout=60)
        return report

    def close(self):
        self.session.listener.close()
        os.close(self.read), os.close(self.write)


@pytest.fixture
def pair(tmp_path, monkeypatch):
    made = []

    def make(student_source: str, names: list[str]) -> Pair:
        made.append(Pair(tmp_path, student_source, names))
        monkeypatch.setitem(sys.modules, "__main__", made[-1].main)
        return made[-1]

    yield make
    for p in made:
        p.close()


SETUP = "import copy\n\nimport torch\n\nfrom text3d_edu import fields\n"


def test_a_model_and_its_optimiser_trained_by_the_students_function_come_back_trained(pair):
    student = SETUP + '''
def fit_step(field, optimiser, target):
    loss = ((field.log_sigma - target) ** 2).mean()
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    return loss.item()
'''
    p = pair(student, ["fit_step"])
    assert p.run(SETUP, setup=True, in_kernel_too=True)["status"] == "ok"
    report = p.run('''
torch.manual_seed(0)
field = fields.GridField(8)
optimiser = torch.optim.Adam(field.parameters(), lr=0.1)
target = torch.full_like(field.log_sigma, 2.0)
losses = [fit_step(field, optimiser, target) for _ in range(30)]
assert losses[-1] < 0.5 * losses[0], losses
torch.manual_seed(0)  # the same 30 Adam steps here: the tester's field holds what the kernel's copy learned
twin = fields.GridField(8)
opt = torch.optim.Adam(twin.parameters(), lr=0.1)
for _ in range(30):
    loss = ((twin.log_sigma - target) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
assert torch.equal(field.log_sigma, twin.log_sigma)
assert optimiser.state_dict()["state"][0]["step"] == 30  # Adam's state came back too
''')
    assert report["status"] == "ok", report


def test_a_setup_global_that_is_none_does_not_break_a_new_copy(pair):
    """Every None inside a model pickled towards the kernel (a Linear without bias) crosses as None, not as a
    reference to the setup's ``nothing``, which the pickler would then look up again without end."""
    student = SETUP + "def output(model, x):\n    return model(x)\n"
    p = pair(student, ["output"])
    setup = SETUP + "nothing = None\n"
    assert p.run(setup, setup=True, in_kernel_too=True)["status"] == "ok"
    report = p.run('''
torch.manual_seed(0)
model = torch.nn.Linear(3, 2, bias=False)
x = torch.randn(4, 3)
assert torch.allclose(output(model, x), model(x))
''')
    assert report["status"] == "ok", report


def test_parameter_gradients_come_back_and_a_frozen_module_gets_none(pair):
    student = SETUP + '''
def loss_of(model, frozen, x):
    frozen.requires_grad_(False)   # the student's function freezes one model: the tests see it frozen
    return (model(frozen(x)) ** 2).sum()
'''
    p = pair(student, ["loss_of"])
    p.run(SETUP, setup=True, in_kernel_too=True)
    report = p.run('''
torch.manual_seed(0)
model, frozen = torch.nn.Linear(3, 2), torch.nn.Linear(3, 3)
model_here, frozen_here = copy.deepcopy(model), copy.deepcopy(frozen).requires_grad_(False)
x = torch.randn(4, 3, requires_grad=True)
x_here = x.detach().clone().requires_grad_(True)
loss_of(model, frozen, x).backward()
(model_here(frozen_here(x_here)) ** 2).sum().backward()
assert torch.allclose(model.weight.grad, model_here.weight.grad) and torch.allclose(x.grad, x_here.grad)
assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())
''')
    assert report["status"] == "ok", report


def test_an_input_the_result_does_not_depend_on_gets_no_edge(pair):
    """A detached input: backward must not walk the tests' graph behind it (which may be freed already)."""
    student = SETUP + '''
def phi_loss(model, x0):
    return ((model(x0.detach()) - 1) ** 2).mean()
'''
    p = pair(student, ["phi_loss"])
    p.run(SETUP, setup=True, in_kernel_too=True)
    report = p.run('''
model = torch.nn.Linear(2, 2)
theta = torch.randn(3, 2, requires_grad=True)
x0 = theta * 2
x0.sum().backward(retain_graph=False)  # frees x0's graph, as the θ step does before the φ step
for _ in range(2):
    phi_loss(model, x0).backward()
assert model.weight.grad is not None and theta.grad is not None
''')
    assert report["status"] == "ok", report


def test_records_permuted_tensors_and_objects_of_the_tests_cross(pair):
    student = SETUP + '''
def denoise(predictor, cond, images):
    return predictor.predict_noise(images, cond) + 0 * images.sum(), images.stride()
'''
    p = pair(student, ["denoise"])
    p.run(SETUP + "from text3d_edu.priors.base import Conditioning\n", setup=True, in_kernel_too=True)
    report = p.run('''
class Constant:
    def __init__(self, value):
        self.value = value

    def predict_noise(self, x, cond):
        assert isinstance(cond, Conditioning) and torch.equal(cond.pooled, torch.ones(1, 4))
        return self.value


images = torch.rand(2, 8, 8, 3).permute(0, 3, 1, 2)  # not contiguous, as render(...)["rgb"].permute(...)
cond = Conditioning(hidden_states=torch.zeros(1, 5, 4), pooled=torch.ones(1, 4))
noise, strides = denoise(Constant(torch.zeros(2, 3, 8, 8)), cond, images)
assert torch.equal(noise, torch.zeros(2, 3, 8, 8))
assert tuple(strides) == images.stride()  # the kernel computed on the same memory layout
''')
    assert report["status"] == "ok", report


def test_a_model_of_a_class_the_test_defines_is_refused_not_faked(pair):
    student = SETUP + "def run(model):\n    return 1\n"
    p = pair(student, ["run"])
    p.run(SETUP, setup=True, in_kernel_too=True)
    report = p.run('''
class Mine(torch.nn.Module):
    pass

run(Mine())
''')
    assert report["status"] == "refused" and "cannot be rebuilt in the kernel" in report["evalue"]


def test_records_and_dimension_orders_from_a_kernel_are_checked():
    from text3d_edu.grading import channel

    for header in ({"__record__": "os:DirEntry", "fields": {}}, {"__record__": "text3d_edu.priors.base:Conditioning",
                                                                 "fields": {"pooled": None}},
                   {"__record__": "text3d_edu.grading.channel:NotData", "fields": {}},
                   {"__tensor__": "t0", "order": [0, 0]}):
        with pytest.raises(channel.NotData):
            channel.decode(json.loads(json.dumps(header)), {"t0": torch.zeros(2, 2)}, {})
    header, tensors, arrays = channel.encode(torch.zeros(2, 3, 4).permute(2, 0, 1))
    assert channel.decode(header, tensors, arrays).stride() == torch.zeros(2, 3, 4).permute(2, 0, 1).stride()


def test_a_function_that_unfreezes_weights_gives_them_gradients_the_tests_see(pair):
    """ε_φ's classic mistake: unfreezing the U-Net under the LoRA. The tests must see the gradients it causes."""
    student = SETUP + '''
def phi_loss(model, x):
    model.body.requires_grad_(True)   # the mistake: the frozen body is trained too
    return model.head(model.body(x)).square().mean()
'''
    p = pair(student, ["phi_loss"])
    p.run(SETUP + "class Adapted:\n    def __init__(self):\n        self.body, self.head = torch.nn.Linear(2, 2)"
                  ".requires_grad_(False), torch.nn.Linear(2, 1)\n\n    def parameters(self):\n"
                  "        return list(self.head.parameters())\n", setup=True, in_kernel_too=True)
    report = p.run('''
model = Adapted()
phi_loss(model, torch.ones(3, 2)).backward()
assert all(p.grad is not None for p in model.head.parameters())
assert all(p.grad is None for p in model.body.parameters()), "the body received gradients"
''')
    assert report["status"] == "error" and "the body received gradients" in report["evalue"], report


def test_a_state_of_the_wrong_shape_from_the_kernel_fails_the_call_not_the_tester(pair):
    student = SETUP + '''
def grow(model):
    model.weight = torch.nn.Parameter(torch.zeros(5, 5))   # another shape: it cannot come back into the tests' model
    return 1
'''
    p = pair(student, ["grow"])
    p.run(SETUP, setup=True, in_kernel_too=True)
    report = p.run("grow(torch.nn.Linear(2, 2))")
    assert report["status"] == "error" and report["ename"] == "NotData" and "malformed state" in report["evalue"]
    assert p.run("assert 1 + 1 == 2")["status"] == "ok"  # the tester goes on
