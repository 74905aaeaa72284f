"""Configs of the published MusicGen checkpoints, for random-weight checkpoints of the real sizes."""

T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
               relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu")
ENCODEC_32KHZ = dict(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], num_filters=64, hidden_size=128,
                     codebook_size=2048, codebook_dim=128, target_bandwidths=[2.2], use_causal_conv=False,
                     use_conv_shortcut=False, compress=2, num_lstm_layers=2, normalize=False, audio_channels=1,
                     chunk_length_s=None, overlap=None)
DECODERS = {
    "small": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, ffn_dim=4096),
    "medium": dict(hidden_size=1536, num_hidden_layers=48, num_attention_heads=24, ffn_dim=6144),
    "large": dict(hidden_size=2048, num_hidden_layers=48, num_attention_heads=32, ffn_dim=8192),
}


def published_config(shape: str) -> dict:
    """config.json contents for facebook/musicgen-{shape} (mono)."""
    decoder = dict(DECODERS[shape], vocab_size=2048, num_codebooks=4, max_position_embeddings=2048,
                   activation_function="gelu", pad_token_id=2048, bos_token_id=2048, decoder_start_token_id=2048,
                   audio_channels=1, scale_embedding=False)
    return {"text_encoder": dict(T5_BASE), "audio_encoder": dict(ENCODEC_32KHZ), "decoder": decoder}


GENERATION_CONFIG = dict(do_sample=True, guidance_scale=3.0, max_length=1500, pad_token_id=2048,
                         bos_token_id=2048, decoder_start_token_id=2048)
