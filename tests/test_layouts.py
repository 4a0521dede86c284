"""Layouts the issue named, on real tensors made the way libraries make them: sparse COO
gradients of a sparse embedding, MKLDNN-packed weights, and nested tensors (strided and
jagged) that require grad. Bytes are checked against torch's own accounting of each tensor,
and, where a storage is readable, against what releasing the holder frees."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.utils.mkldnn
from torch.multiprocessing.reductions import StorageWeakRef

from conftest import run_audit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Runner:
    pass


def storage_bytes(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def charged(result, path: str) -> dict[int, int]:
    return {s.address: s.nbytes for s in result.storages if path in s.owners}


def test_sparse_embedding_gradient_counts_indices_and_values(baseline):
    runner = Runner()
    runner.embedding = torch.nn.Embedding(1000, 16, sparse=True)
    runner.embedding(torch.tensor([1, 5, 7, 5, 999])).sum().backward()
    grad = runner.embedding.weight.grad
    assert grad.layout is torch.sparse_coo
    expected = dict(storage_bytes(t) for t in (runner.embedding.weight, grad._indices(), grad._values()))
    refs = [StorageWeakRef(t.untyped_storage()) for t in (runner.embedding.weight, grad._indices(), grad._values())]
    del grad

    result = run_audit(runner, baseline)

    assert charged(result, "runner.embedding") == expected
    layouts = {s.address: s.layout for s in result.storages}
    assert sorted(layouts.values()) == ["sparse_coo", "sparse_coo", "strided"]
    owner = result.owner("runner.embedding")
    assert owner.retained_bytes == sum(expected.values()) == 1000 * 16 * 4 + 5 * 8 + 5 * 16 * 4
    del runner.embedding
    gc.collect()
    assert all(ref.expired() for ref in refs)


def test_a_sparse_gradient_kept_alone_is_charged_to_its_holder(baseline):
    """The optimizer-state shape of the mistake: a list of sparse gradients outlives the model."""
    embedding = torch.nn.Embedding(500, 8, sparse=True)
    embedding(torch.tensor([3, 4])).sum().backward()
    runner = Runner()
    runner.grads = [embedding.weight.grad]
    del embedding
    grad = runner.grads[0]
    expected = dict(storage_bytes(t) for t in (grad._indices(), grad._values()))
    del grad
    result = run_audit(runner, baseline)
    assert charged(result, "runner.grads") == expected
    assert result.held_bytes == sum(expected.values())


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no MKLDNN")
def test_mkldnn_packed_module_weights_are_counted(baseline):
    """`to_mkldnn(module)` packs weights into opaque MKLDNN tensors: no storage to read, so the
    bytes are numel x element size, never skipped (the issue's inductor `freezing=True` leak)."""
    runner = Runner()
    runner.packed = torch.utils.mkldnn.to_mkldnn(torch.nn.Linear(64, 32))
    gc.collect()
    result = run_audit(runner, baseline)
    opaque = [s for s in result.storages if s.layout == "_mkldnn"]
    assert sorted(s.nbytes for s in opaque) == [32 * 4, 64 * 32 * 4]
    assert all("estimated" in s.note and not s.unknown for s in opaque)
    assert all(s.owners for s in opaque), "every opaque storage has a holder the gate counts"
    assert result.held_bytes >= 32 * 4 + 64 * 32 * 4


def test_mkldnn_tensor_requiring_grad_graph_is_walked(baseline):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no MKLDNN")
    runner = Runner()
    runner.kept = torch.randn(16, 16).to_mkldnn()
    result = run_audit(runner, baseline)
    (storage,) = result.storages
    assert storage.nbytes == 16 * 16 * 4 and result.owner("runner.kept").retained_bytes == 16 * 16 * 4


def test_strided_nested_tensor_with_autograd_is_counted(baseline):
    """A strided nested tensor that requires grad, an output of it and its gradient: each
    buffer counted once with its real size, and the audit does not crash on any of them."""
    runner = Runner()
    runner.batch = torch.nested.nested_tensor([torch.zeros(30), torch.zeros(50)], requires_grad=True)
    runner.output = runner.batch * 2
    torch.nested.to_padded_tensor(runner.output, 0.0).sum().backward(retain_graph=True)
    result = run_audit(runner, baseline)
    batch = result.owner("runner.batch")
    assert batch is not None and batch.reachable_bytes == 2 * 80 * 4  # its buffer and its .grad
    nested = [s for s in result.storages if s.layout == "nested"]
    assert {s.nbytes for s in nested} == {80 * 4} and len(nested) == 3  # batch, grad, output
    assert not any(s.unknown for s in result.storages)
    assert result.owner("runner.output").reachable_bytes >= 80 * 4


def test_jagged_nested_tensor_with_autograd_is_counted(baseline):
    runner = Runner()
    runner.batch = torch.nested.nested_tensor(
        [torch.zeros(3, 4), torch.zeros(5, 4)], layout=torch.jagged, requires_grad=True
    )
    values, offsets = runner.batch.values(), runner.batch.offsets()
    expected = dict(storage_bytes(t) for t in (values, offsets))
    del values, offsets
    runner.output = runner.batch * 2
    result = run_audit(runner, baseline)
    assert charged(result, "runner.batch") == expected
    assert expected[max(expected, key=expected.get)] == 8 * 4 * 4
    output_values = runner.output.values()
    assert storage_bytes(output_values) in charged(result, "runner.output").items()
    assert not any(s.unknown for s in result.storages)
