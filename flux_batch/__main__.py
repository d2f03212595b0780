from flux_batch.cli import main

main()
