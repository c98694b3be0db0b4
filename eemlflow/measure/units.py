"""Energy units, converted in one place: CodeCarbon and the CSV speak kWh, people read Wh and J, counters count
mJ (NVML) and uJ (RAPL); emissions are kg CO2-eq, read as g."""

J_PER_KWH = 3.6e6
WH_PER_KWH = 1e3
MJ_PER_KWH = J_PER_KWH * 1e3  # NVML's total-energy counter counts millijoules
UJ_PER_KWH = J_PER_KWH * 1e6  # RAPL's energy_uj counts microjoules
G_PER_KG = 1e3  # emissions: CodeCarbon's kg CO2-eq, read as grams
