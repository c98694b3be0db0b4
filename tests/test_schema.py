from eemlflow.store import convert, schema

# The header of the study's published CSV (SPEC section 1), in order.
STUDY_HEADER = (
    "timestamp,project_name,run_id,experiment_id,experiment_name,model,dataset,epochs,batch_size,duration,"
    "emissions,emissions_rate,cpu_power,gpu_power,ram_power,cpu_energy,gpu_energy,ram_energy,energy_consumed,"
    "country_name,country_iso_code,region,cloud_provider,cloud_region,os,python_version,codecarbon_version,"
    "cpu_count,cpu_model,gpu_count,gpu_model,longitude,latitude,ram_total_size,tracking_mode,on_cloud,pue,"
    "train_loss,eval_loss,eval_top1,eval_top5,lr"
).split(",")


def test_the_schema_is_the_studys_42_columns_in_order():
    assert list(schema.COLUMN_NAMES) == STUDY_HEADER


def test_every_column_has_one_distinct_mlflow_key():
    keys = [(c.kind, c.key) for c in schema.COLUMNS + schema.EXTRAS]
    assert len(keys) == len(set(keys))


def test_values_round_trip_through_text():
    col_int, col_float = schema.BY_NAME["epochs"], schema.BY_NAME["duration"]
    assert convert.format_value(convert.coerce("50", col_int)) == "50"
    assert convert.coerce(16.0, col_int) == 16
    x = 1.2345678901234567e-07
    assert convert.coerce(convert.format_value(x), col_float) == x
    assert convert.format_value(None) == "" and convert.coerce("", col_float) is None
