"""The seed's complete Python client, copied VERBATIM from
shared/seeds/file-transcription-8767.md ("完整客户端示例 / Python 客户端示例").

Do not edit the code below: the tests prove the server works with it unchanged (it passes
read_limit/write_limit, which only the legacy client of websockets < 14 accepts).
"""
# ruff: noqa
# fmt: off
# mypy: ignore-errors

import asyncio
import websockets
import json
import base64
import hashlib
import os
from pathlib import Path

class FunASRClient:
    def __init__(self, server_url="ws://localhost:8767"):
        self.server_url = server_url
        self.websocket = None
    
    async def connect(self):
        """建立连接"""
        self.websocket = await websockets.connect(
            self.server_url,
            ping_interval=60,
            ping_timeout=120,
            max_size=10 * 1024 * 1024,
            read_limit=2**20,
            write_limit=2**20
        )
        
        # 接收欢迎消息
        welcome = await self.receive_message()
        if welcome.get("type") == "connected":
            print(f"✓ 连接成功: {welcome['data']['message']}")
            return True
        return False
    
    async def disconnect(self):
        """断开连接"""
        if self.websocket:
            await self.websocket.close()
    
    async def send_message(self, message):
        """发送消息"""
        await self.websocket.send(json.dumps(message, ensure_ascii=False))
    
    async def receive_message(self, timeout=30):
        """接收消息"""
        message_json = await asyncio.wait_for(
            self.websocket.recv(), timeout=timeout
        )
        return json.loads(message_json)
    
    def calculate_file_hash(self, file_path):
        """计算文件MD5哈希"""
        hash_md5 = hashlib.md5()
        with open(file_path, "rb") as f:
            for chunk in iter(lambda: f.read(8192), b""):
                hash_md5.update(chunk)
        return hash_md5.hexdigest()
    
    async def transcribe_file(self, file_path, output_format="json", force_refresh=False):
        """转录文件"""
        file_path = Path(file_path)
        file_size = file_path.stat().st_size
        file_hash = self.calculate_file_hash(file_path)
        
        print(f"文件: {file_path.name}")
        print(f"大小: {file_size/1024/1024:.2f}MB")
        print(f"哈希: {file_hash[:8]}...")
        
        # 判断使用单文件还是分片上传
        if file_size > 5 * 1024 * 1024:  # >5MB使用分片
            return await self._upload_chunked(file_path, file_size, file_hash, output_format, force_refresh)
        else:
            return await self._upload_single(file_path, file_size, file_hash, output_format, force_refresh)
    
    async def _upload_single(self, file_path, file_size, file_hash, output_format, force_refresh):
        """单文件上传"""
        print("使用单文件上传模式")
        
        # 发送上传请求
        request = {
            "type": "upload_request",
            "data": {
                "file_name": file_path.name,
                "file_size": file_size,
                "file_hash": file_hash,
                "output_format": output_format,
                "force_refresh": force_refresh
            }
        }
        
        await self.send_message(request)
        response = await self.receive_message()
        
        if response["type"] == "task_complete":
            # 直接返回缓存结果
            print("✓ 使用缓存结果")
            return response["data"]["result"]
        
        if response["type"] != "upload_ready":
            raise Exception(f"上传请求失败: {response}")
        
        task_id = response["data"]["task_id"]
        print(f"✓ 获得任务ID: {task_id}")
        
        # 读取文件并发送
        with open(file_path, 'rb') as f:
            file_data = f.read()
        
        upload_data = {
            "type": "upload_data",
            "data": {
                "task_id": task_id,
                "file_data": base64.b64encode(file_data).decode()
            }
        }
        
        await self.send_message(upload_data)
        response = await self.receive_message()
        
        if response["type"] != "upload_complete":
            raise Exception(f"文件上传失败: {response}")
        
        print("✓ 文件上传完成，等待转录结果...")
        
        # 等待转录完成
        return await self._wait_for_result()
    
    async def _upload_chunked(self, file_path, file_size, file_hash, output_format, force_refresh):
        """分片上传"""
        chunk_size = 1024 * 1024  # 1MB分片
        total_chunks = (file_size + chunk_size - 1) // chunk_size
        
        print(f"使用分片上传模式（{total_chunks}个分片）")
        
        # 发送分片上传请求
        request = {
            "type": "upload_request",
            "data": {
                "file_name": file_path.name,
                "file_size": file_size,
                "file_hash": file_hash,
                "chunk_size": chunk_size,
                "total_chunks": total_chunks,
                "upload_mode": "chunked",
                "output_format": output_format,
                "force_refresh": force_refresh
            }
        }
        
        await self.send_message(request)
        response = await self.receive_message()
        
        if response["type"] == "task_complete":
            print("✓ 使用缓存结果")
            return response["data"]["result"]
        
        if response["type"] != "upload_ready":
            raise Exception(f"分片上传请求失败: {response}")
        
        task_id = response["data"]["task_id"]
        print(f"✓ 获得任务ID: {task_id}")
        
        # 分片上传
        with open(file_path, 'rb') as f:
            for chunk_index in range(total_chunks):
                chunk_data = f.read(chunk_size)
                chunk_hash = hashlib.md5(chunk_data).hexdigest()
                
                chunk_message = {
                    "type": "upload_chunk",
                    "data": {
                        "task_id": task_id,
                        "chunk_index": chunk_index,
                        "chunk_size": len(chunk_data),
                        "chunk_hash": chunk_hash,
                        "chunk_data": base64.b64encode(chunk_data).decode(),
                        "is_last": chunk_index == total_chunks - 1
                    }
                }
                
                await self.send_message(chunk_message)
                
                # 等待分片确认
                chunk_response = await self.receive_message(timeout=60)
                if chunk_response["type"] != "chunk_received":
                    raise Exception(f"分片 {chunk_index} 上传失败")
                
                progress = chunk_response["data"]["progress"]
                print(f"上传进度: {progress:.1f}% ({chunk_index + 1}/{total_chunks})")
        
        print("✓ 所有分片上传完成，等待处理...")
        
        # 等待上传完成通知
        response = await self.receive_message()
        if response["type"] not in ["upload_complete", "task_queued"]:
            raise Exception(f"分片上传完成失败: {response}")
        
        if response["type"] == "task_queued":
            position = response["data"]["queue_position"]
            wait_time = response["data"]["estimated_wait_minutes"]
            print(f"⏳ 任务排队中，位置: {position}，预计等待: {wait_time}分钟")
        
        # 等待转录完成
        return await self._wait_for_result()
    
    async def _wait_for_result(self):
        """等待转录结果"""
        while True:
            response = await self.receive_message(timeout=300)  # 5分钟超时
            
            if response["type"] == "task_progress":
                progress = response["data"]["progress"]
                status = response["data"]["status"]
                message = response["data"].get("message", "")
                print(f"转录进度: {progress}% - {status} - {message}")
            
            elif response["type"] == "task_complete":
                result = response["data"]["result"]
                print("✓ 转录完成")
                return result
            
            elif response["type"] == "error":
                error_msg = response["data"]["message"]
                raise Exception(f"转录失败: {error_msg}")

# 使用示例
async def main():
    client = FunASRClient()
    
    try:
        # 连接服务器
        if not await client.connect():
            print("❌ 连接失败")
            return
        
        # 转录文件
        result = await client.transcribe_file(
            "path/to/your/audio.m4a",
            output_format="json",
            force_refresh=False
        )
        
        # 处理结果
        print("=" * 50)
        print("转录结果:")
        print(f"文本: {result.get('text', '')}")
        print(f"时长: {result.get('duration', 0)}秒")
        print(f"分段数: {len(result.get('segments', []))}")
        print(f"说话人数: {len(result.get('speakers', []))}")
        
    except Exception as e:
        print(f"❌ 错误: {e}")
    finally:
        await client.disconnect()

if __name__ == "__main__":
    asyncio.run(main())
