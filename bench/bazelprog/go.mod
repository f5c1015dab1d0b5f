module goremotecache.local/bench/bazelprog

go 1.24
