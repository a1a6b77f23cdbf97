"""fleetd/registry/connection.py: a call that fails while its task is being cancelled raises
CancelledError, not a RegistryError a loop would catch and carry on after (grpc.aio turns the
cancellation of the awaiting task into an RPC error, CANCELLED)."""

import asyncio

import grpc
import pytest

from fleetd.registry.connection import raise_if_cancelling


def _cancelled_rpc() -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                details="Locally cancelled by application!")


async def test_an_rpc_error_of_a_task_being_cancelled_is_the_cancellation():
    async def body():
        asyncio.current_task().cancel()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # what grpc.aio does with it: the awaited call ends with an RPC error instead
        raise_if_cancelling(_cancelled_rpc())
        return "carried on"

    task = asyncio.ensure_future(body())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_an_rpc_error_of_a_task_nobody_cancels_is_left_to_translation():
    raise_if_cancelling(_cancelled_rpc())  # returns: the caller translates it as before
    raise_if_cancelling(TimeoutError())
