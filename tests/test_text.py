from asrhub.text import join_texts


def test_join_texts():
    assert join_texts(["Hello there.", " How are you? ", ""]) == "Hello there. How are you?"
    assert join_texts(["他一定在家", "因为灯亮着。"]) == "他一定在家因为灯亮着。"
    assert join_texts(["the light is on", "他一定在家"]) == "the light is on他一定在家"
    assert join_texts(["开放时间早上9点", "至下午5点。"]) == "开放时间早上9点至下午5点。"
    assert join_texts(["欢迎大家", "来体验。", "OK"]) == "欢迎大家来体验。OK"
    assert join_texts(["OK", "好的"]) == "OK好的"
    assert join_texts([]) == ""
