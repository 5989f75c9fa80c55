# The seed's Python streaming client (客户端实现示例 / Python).
# Copied verbatim from shared/seeds/vad-stream-9200.md; only the last line (which would
# run the client on import) is commented out.
# fmt: off
# ruff: noqa
import asyncio
import websockets
import json
import numpy as np

async def asr_client(url="ws://localhost:9200"):
    async with websockets.connect(url) as websocket:
        print("Connected to ASR server")

        # 启动心跳任务
        async def heartbeat():
            while True:
                await asyncio.sleep(30)
                await websocket.send(json.dumps({"command": "ping"}))

        heartbeat_task = asyncio.create_task(heartbeat())

        try:
            # 接收消息
            while True:
                message = await websocket.recv()

                if isinstance(message, bytes):
                    # 二进制消息（服务端不发送二进制，但可以处理）
                    pass
                else:
                    # JSON 消息
                    data = json.loads(message)
                    if data["type"] == "vad":
                        event = data["event"]
                        if event == "speech_start":
                            print("语音开始")
                        elif event == "speech_end":
                            duration = data.get("duration", 0)
                            samples = data.get("samples", 0)
                            print(f"语音结束，时长: {duration}秒, 采样点: {samples}")
                    elif data["type"] == "result":
                        print(f"识别结果: {data['text']}")
                        if data.get("is_final"):
                            print("最终结果")
                    elif data["type"] == "error":
                        print(f"错误: {data['message']} (code: {data['code']})")
                    elif data["type"] == "pong":
                        print("Pong")

        finally:
            heartbeat_task.cancel()

# 使用示例
# asyncio.run(asr_client())  # (run by the tests against a server on a free port)
