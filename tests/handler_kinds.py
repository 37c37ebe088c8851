"""Callables wqd must refuse as handlers: calling them runs none of their body
(tests/test_hostile_cli.py). Each would record a run if its body ever ran."""

import functools


async def coroutine_function(message):
    raise AssertionError("never awaited")


def generator_function(message):
    yield message


async def async_generator_function(message):
    yield message


class AsyncCallable:
    async def __call__(self, message):
        raise AssertionError("never awaited")


class GeneratorCallable:
    def __call__(self, message):
        yield message


async_callable = AsyncCallable()
generator_callable = GeneratorCallable()
partial_coroutine = functools.partial(coroutine_function)


class PlainCallable:
    def __call__(self, message):
        return None


plain_callable = PlainCallable()
