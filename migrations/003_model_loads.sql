-- How long each part of a model took to load, per load (issue: model-load progress).
CREATE TABLE model_loads (
    load_id    TEXT NOT NULL,               -- one load of the whole model
    loaded_at  REAL NOT NULL,               -- unix seconds when it finished
    model      TEXT NOT NULL,
    device     TEXT NOT NULL,
    dtype      TEXT NOT NULL,
    component  TEXT NOT NULL,               -- text_encoder, transformer, vae
    seconds    REAL NOT NULL,
    PRIMARY KEY (load_id, component)
) WITHOUT ROWID;
CREATE INDEX model_loads_by_model ON model_loads (model, device, dtype, loaded_at);
