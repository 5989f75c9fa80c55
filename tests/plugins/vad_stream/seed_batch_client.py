# The seed's Python batch client (批量识别示例 (Python)).
# Copied verbatim from shared/seeds/vad-stream-9200.md; only the last line (which would
# run the client on import) is commented out.
# fmt: off
# ruff: noqa
import asyncio
import websockets
import json
from pathlib import Path

async def batch_asr(audio_file: str, url: str = "ws://localhost:9200"):
    """批量识别音频文件"""
    async with websockets.connect(url) as ws:
        # 读取音频文件
        audio_data = Path(audio_file).read_bytes()

        print(f"开始批量识别，文件大小: {len(audio_data)} 字节")

        # 发送 batch_start 命令
        await ws.send(json.dumps({"command": "batch_start"}))

        # 接收确认消息
        response = json.loads(await ws.recv())
        print(f"服务端响应: {response}")

        # 分块发送音频数据（避免单个消息过大）
        chunk_size = 4096
        for i in range(0, len(audio_data), chunk_size):
            chunk = audio_data[i:i + chunk_size]
            await ws.send(chunk)

        # 发送 batch_end 命令
        await ws.send(json.dumps({"command": "batch_end"}))
        print("音频发送完成，等待识别结果...")

        # 接收识别进度和结果
        while True:
            message = await ws.recv()
            data = json.loads(message)

            if data["type"] == "batch_progress":
                print(f"状态: {data['state']}")
                if "received_bytes" in data:
                    print(f"已接收: {data['received_bytes']} 字节")
            elif data["type"] == "batch_result":
                print(f"\n识别结果: {data['text']}")
                print(f"音频时长: {data['duration']:.2f} 秒")
                print(f"采样点数: {data['samples']}")
                return data["text"]
            elif data["type"] == "error":
                print(f"错误: {data['message']}")
                return None

# 使用示例
# asyncio.run(batch_asr("test_audio.pcm"))  # (run by the tests against a server on a free port)
