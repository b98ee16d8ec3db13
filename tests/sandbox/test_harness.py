"""The harness itself: a private Redis (not 6379), a clean database per test, and real HTTP."""

import httpx
import redis
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from workers.sandbox.redis_server import RedisServer


def test_private_redis_is_not_the_shared_instance(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    assert redis_server.port != 6379
    assert redis_client.ping()


def test_each_test_gets_a_clean_database_first(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", "1")


def test_each_test_gets_a_clean_database_second(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set("left-behind", "1")


def test_private_redis_survives_restart_with_aof(private_redis: RedisServer) -> None:
    client = redis.Redis.from_url(private_redis.url)
    client.set("k", "v")
    client.execute_command("BGREWRITEAOF")
    client.close()
    import time

    time.sleep(1.2)  # appendfsync everysec
    private_redis.stop()
    assert not private_redis.ping()
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    assert client.get("k") == b"v"
    client.close()


def test_serve_runs_an_asgi_app_over_real_http(serve) -> None:  # type: ignore[no-untyped-def]
    async def hello(request):  # type: ignore[no-untyped-def]
        return PlainTextResponse("hi")

    server = serve(Starlette(routes=[Route("/", hello)]))
    assert httpx.get(server.url + "/").text == "hi"
