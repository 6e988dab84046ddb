from gatebench.train.cli import main

main()
