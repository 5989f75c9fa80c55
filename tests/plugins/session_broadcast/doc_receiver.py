# ruff: noqa  (kept exactly as the seed prints it)
# The seed's "3.2 Python Receiver 示例" (shared/seeds/session-broadcast-8000.md), verbatim
# except the values of SERVER_URI and SESSION_ID, which the tests set on a fresh copy of this
# module (see conftest.load_doc_client) before calling receive_results().
import asyncio
import websockets

# --- 配置 ---
# !!! 必须和 Sender 使用相同的 SESSION_ID !!!
SERVER_URI = "ws://localhost:8000/ws/asr/{session_id}?mode=receiver"
SESSION_ID = "在此处粘贴你的Sender会话ID"

async def receive_results():
    """连接到服务器并接收识别结果"""
    if "粘贴你的Sender会话ID" in SESSION_ID:
        print("错误:请先设置有效的 SESSION_ID!")
        return

    uri = SERVER_URI.format(session_id=SESSION_ID)
    print(f"作为 Receiver 连接到: {uri}")

    async with websockets.connect(uri) as websocket:
        try:
            print("等待接收识别结果...")
            while True:
                message = await websocket.recv()
                print(f"收到结果: {message}")
        except websockets.exceptions.ConnectionClosed as e:
            print(f"连接已关闭: {e.code} {e.reason}")

if __name__ == "__main__":
    asyncio.run(receive_results())
