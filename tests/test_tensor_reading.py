"""Every tensor layout and subclass kind, audited for real: what each owns is counted once,
and a tensor whose storage cannot be read is counted as unknown bytes, never dropped."""

from __future__ import annotations


import pytest
import torch

from conftest import run_audit
from hostile import CALLS, called

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class Runner:
    pass


def data_address(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def only_owner(result, path):
    owner = result.owner(path)
    assert owner is not None, f"no owner {path!r}; got {[o.path for o in result.owners]}"
    return owner


def test_sparse_coo_counts_indices_and_values(baseline):
    runner = Runner()
    dense = torch.zeros(40, 40)
    dense[torch.arange(40), torch.arange(40)] = 1.0
    runner.adjacency = dense.to_sparse()
    del dense
    result = run_audit(runner, baseline)
    indices, values = runner.adjacency._indices(), runner.adjacency._values()
    expected = {data_address(indices): 2 * 40 * 8, data_address(values): 40 * 4}
    assert {s.address: s.nbytes for s in result.storages} == expected
    assert {s.layout for s in result.storages} == {"sparse_coo"}
    notes = sorted(s.note for s in result.storages)
    assert notes == ["indices of a sparse_coo tensor", "values of a sparse_coo tensor"]
    owner = only_owner(result, "runner.adjacency")
    assert owner.reachable_bytes == owner.retained_bytes == sum(expected.values()) and owner.storages == 2


@pytest.mark.parametrize(
    "convert, parts",
    [
        (lambda t: t.to_sparse_csr(), ("crow_indices", "col_indices", "values")),
        (lambda t: t.to_sparse_csc(), ("ccol_indices", "row_indices", "values")),
        (lambda t: t.to_sparse_bsr((2, 2)), ("crow_indices", "col_indices", "values")),
        (lambda t: t.to_sparse_bsc((2, 2)), ("ccol_indices", "row_indices", "values")),
    ],
    ids=["csr", "csc", "bsr", "bsc"],
)
def test_compressed_sparse_layouts(baseline, convert, parts):
    runner = Runner()
    runner.matrix = convert(torch.eye(16))
    result = run_audit(runner, baseline)
    expected = {}
    for part in parts:
        component = getattr(runner.matrix, part)()
        expected[data_address(component)] = component.untyped_storage().nbytes()
    assert {s.address: s.nbytes for s in result.storages} == expected
    assert only_owner(result, "runner.matrix").reachable_bytes == sum(expected.values())
    layout = str(runner.matrix.layout).replace("torch.", "")
    assert all(s.layout == layout and not s.unknown for s in result.storages)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no MKLDNN")
def test_mkldnn_bytes_are_estimated(baseline):
    runner = Runner()
    runner.packed = torch.zeros(32, 32).to_mkldnn()
    result = run_audit(runner, baseline)
    (storage,) = result.storages
    assert storage.nbytes == 32 * 32 * 4 and storage.layout == "_mkldnn"
    assert "estimated" in storage.note and not storage.unknown
    assert only_owner(result, "runner.packed").reachable_bytes == 4096


def test_strided_nested_tensor_counts_its_buffer(baseline):
    runner = Runner()
    runner.batch = torch.nested.nested_tensor([torch.zeros(30), torch.zeros(50)])
    result = run_audit(runner, baseline)
    (storage,) = result.storages
    assert storage.nbytes == 80 * 4 and storage.layout == "nested" and storage.shape == [80]
    assert only_owner(result, "runner.batch").reachable_bytes == 320


def test_jagged_nested_tensor_is_counted_through_its_inner_tensors(baseline):
    runner = Runner()
    runner.batch = torch.nested.nested_tensor([torch.zeros(30), torch.zeros(50)], layout=torch.jagged)
    result = run_audit(runner, baseline)
    values = runner.batch.values()
    assert data_address(values) in {s.address for s in result.storages}
    assert result.held_bytes >= 80 * 4  # the values, plus its offsets
    assert not [s for s in result.storages if s.unknown]


class Wrapper(torch.Tensor):
    """A wrapper subclass (like DTensor): no bytes of its own, a real tensor inside; its
    sizes, device and layout are answered by its __torch_dispatch__, which refuses."""

    @staticmethod
    def __new__(cls, inner):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            dtype=inner.dtype,
            device=inner.device,
            dispatch_sizes_strides_policy="sizes",
            dispatch_device=True,
            dispatch_layout=True,
        )
        wrapper.inner = inner
        return wrapper

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise called(f"Wrapper.__torch_dispatch__({func})")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise called("Wrapper.__torch_function__")


def test_wrapper_subclass_owns_nothing_its_inner_tensor_is_counted(baseline):
    runner = Runner()
    runner.sharded = Wrapper(torch.zeros(1009))
    CALLS.clear()
    result = run_audit(runner, baseline)
    assert CALLS == []
    (storage,) = result.storages
    assert storage.nbytes == 4036 and storage.example == "runner.sharded.inner"
    assert only_owner(result, "runner.sharded").reachable_bytes == 4036


class Dispatching(torch.Tensor):
    """A real-storage subclass (`_make_subclass`) whose __torch_dispatch__ refuses every op."""

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise called(f"Dispatching.__torch_dispatch__({func})")


def test_dispatch_subclass_with_real_storage_is_read_from_its_storage(baseline):
    runner = Runner()
    runner.weights = torch.Tensor._make_subclass(Dispatching, torch.zeros(1013))
    CALLS.clear()
    result = run_audit(runner, baseline)
    assert CALLS == []
    (storage,) = result.storages
    assert storage.nbytes == 4052 and storage.shape == [1013] and "__torch_dispatch__" in storage.note
    assert only_owner(result, "runner.weights").reachable_bytes == 4052


def test_meta_and_fake_tensors_own_no_memory(baseline):
    from torch._subclasses.fake_tensor import FakeTensorMode

    runner = Runner()
    runner.shape_only = torch.empty(10**6, device="meta")
    with FakeTensorMode():
        runner.fake = torch.empty(10**6)
    runner.real = torch.zeros(1019)
    result = run_audit(runner, baseline)
    assert [s.nbytes for s in result.storages] == [4076]
    assert [o.path for o in result.owners] == ["runner.real"]


def test_unreadable_storage_is_counted_as_unknown(baseline):
    """A functionalized tensor's storage has no readable data pointer: its bytes still count."""
    runner = Runner()
    runner.functional = torch._to_functional_tensor(torch.zeros(1021))
    result = run_audit(runner, baseline)
    (storage,) = [s for s in result.storages if s.unknown]
    assert storage.nbytes == 4084 and storage.address == 0 and storage.dtype == "float32"
    assert storage.note.startswith("its storage could not be read (RuntimeError: ")
    owner = only_owner(result, "runner.functional")
    assert owner.reachable_bytes == 4084
    assert result.held_bytes >= 4084


def test_views_of_a_hostile_subclass_share_the_plain_storage(baseline):
    from hostile import RefusingTensor

    runner = Runner()
    runner.base = torch.zeros(1031)
    with torch._C.DisableTorchFunctionSubclass():
        runner.alias = runner.base.as_subclass(RefusingTensor)
        runner.view = runner.alias[10:]
    CALLS.clear()
    result = run_audit(runner, baseline)
    assert CALLS == []
    (storage,) = result.storages
    assert storage.nbytes == 4124 and storage.tensors == 3 and storage.shape == [1031]
