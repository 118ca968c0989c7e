"""Models of FLIP (paper Sec. III-IV): the sharded feature embedding (`embedding`), the ID-based
models that read its output (`id_models`), PLM loading (`plm`) and field-level masking
(`masking`)."""
