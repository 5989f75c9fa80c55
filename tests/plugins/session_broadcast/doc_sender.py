# ruff: noqa  (kept exactly as the seed prints it)
# The seed's "3.1 Python Sender 示例" (shared/seeds/session-broadcast-8000.md), verbatim except
# the values of SERVER_URI, SESSION_ID and AUDIO_FILE, which the tests set on a fresh copy of
# this module (see conftest.load_doc_client) before calling send_audio().
import asyncio
import websockets
import soundfile as sf
import uuid

# --- 配置 ---
SERVER_URI = "ws://localhost:8000/ws/asr/{session_id}?mode=sender"
SESSION_ID = str(uuid.uuid4()) # 为这次会话生成一个唯一的ID
AUDIO_FILE = "tests/XT_ZZY_denoise.wav" # 替换为你的音频文件路径
CHUNK_SIZE = 3200 # 对应 100ms 的 float32 数据 (16000 * 4 * 0.1)

async def send_audio():
    """连接到服务器,并流式发送音频文件"""
    uri = SERVER_URI.format(session_id=SESSION_ID)
    print(f"作为 Sender 连接到: {uri}")

    async with websockets.connect(uri) as websocket:
        try:
            # 读取音频文件
            with sf.SoundFile(AUDIO_FILE, 'r') as f:
                assert f.samplerate == 16000, "音频文件采样率必须为 16kHz"
                assert f.channels == 1, "音频文件必须为单声道"

                print("开始发送音频...")
                while True:
                    # 读取为 float32 类型
                    data = f.read(CHUNK_SIZE, dtype='float32')
                    if not data.any():
                        break
                    # 将 numpy 数组转换为原始字节流
                    await websocket.send(data.tobytes())
                    await asyncio.sleep(0.1) # 模拟实时音频输入

            print("音频发送完毕,发送结束信号。")
            await websocket.send("close")

            # 等待服务器的最终确认或关闭连接
            response = await websocket.recv()
            print(f"收到服务器最终响应: {response}")

        except websockets.exceptions.ConnectionClosed as e:
            print(f"连接已关闭: {e}")
        except Exception as e:
            print(f"发生错误: {e}")

if __name__ == "__main__":
    asyncio.run(send_audio())
