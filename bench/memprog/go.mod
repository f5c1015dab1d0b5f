module goremotecache.local/bench/memprog

go 1.24
